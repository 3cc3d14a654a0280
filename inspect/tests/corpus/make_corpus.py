#!/usr/bin/env python3
"""Writes the gate's bypass corpus: malicious model files (every published scanner bypass we
found, by class) and benign real-shaped ones, into OUTDIR/malicious and OUTDIR/benign.

    python3 make_corpus.py OUTDIR

Nothing here is ever unpickled or loaded: pickles are written opcode by opcode. A malicious
file only *names* a callable (`os.getcwd`, `pip.main`, ...); loading it would call that
callable with a harmless argument. Each case says where the bypass was published. Only the
Python standard library is used, so the corpus is the same on every machine.
"""

import bz2
import gzip
import io
import json
import lzma
import os
import struct
import sys
import tarfile
import zipfile
import zlib

OUT = sys.argv[1] if len(sys.argv) > 1 else "corpus-out"
CASES = []  # (verdict, name, source)


def put(verdict, name, data, source):
    path = os.path.join(OUT, verdict, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    CASES.append((verdict, name, source))


def bad(name, data, source):
    put("malicious", name, data, source)


def good(name, data, source):
    put("benign", name, data, source)


# --- pickle opcodes, by hand -------------------------------------------------------------

def sbu(s):  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def call_global(module, name, arg="--version", proto=2):
    """module.name(arg) by GLOBAL and REDUCE."""
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    a = b"X" + struct.pack("<I", len(arg)) + arg.encode() if proto >= 1 else b"V" + arg.encode() + b"\n"
    tup = b"(" + a + b"t" if proto < 2 else a + b"\x85"
    return head + b"c" + module.encode() + b"\n" + name.encode() + b"\n" + tup + b"R."


def call_stack_global(module, name, arg="--version", proto=4):
    """module.name(arg) by STACK_GLOBAL (protocol 4)."""
    body = sbu(module) + sbu(name) + b"\x93" + sbu(arg) + b"\x85R."
    frame = b"\x95" + struct.pack("<Q", len(body))
    return b"\x80" + bytes([proto]) + frame + body


def benign_pickle(proto=2):
    """{'a': 1, 'b': [1.5, 'x']} as Python writes it, by hand (no imports)."""
    if proto == 0:
        return b"(dp0\nVa\np1\nI1\nsVb\np2\n(lp3\nF1.5\naVx\np4\nas."
    return b"\x80" + bytes([proto]) + b"}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G?\xf8\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04eu."


def zip_bytes(members, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def npy(header_dict_text, data, version=(1, 0)):
    """A .npy file whose header is exactly `header_dict_text` (padded as NumPy pads)."""
    h = header_dict_text.encode("latin1")
    pre = 10 if version[0] == 1 else 12
    total = pre + len(h) + 1
    pad = (64 - total % 64) % 64
    h = h + b" " * pad + b"\n"
    if version[0] == 1:
        return b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(h)) + h + data
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(h)) + h + data


def torch_zip(data_pkl, storages=(), prefix="archive"):
    members = [(f"{prefix}/data.pkl", data_pkl)]
    for key, raw in storages:
        members.append((f"{prefix}/data/{key}", raw))
    members.append((f"{prefix}/version", b"3\n"))
    return zip_bytes(members)


def torch_tensor_pickle(key="0", numel=4):
    """A state dict {'w': tensor} as torch.save writes data.pkl (persistent id for storage)."""
    p = b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01"
    p += b"ctorch._utils\n_rebuild_tensor_v2\nq\x02("
    p += b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04"
    p += b"X" + struct.pack("<I", len(key)) + key.encode() + b"X\x03\x00\x00\x00cpuq\x05K" + bytes([numel]) + b"tq\x06Q"
    p += b"K\x00K" + bytes([numel]) + b"\x85K\x01\x85\x89ccollections\nOrderedDict\nq\x07)Rq\x08tq\tRq\ns."
    return p


def torch_legacy(main_pickle, storage_raw):
    """PyTorch's pre-1.6 format: five pickles back to back, then raw storage bytes."""
    magic = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # 0x1950a86a20f9469cfc6c
    proto = b"\x80\x02M\xe9\x03."  # 1001
    sysinfo = b"\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq\x01M\xe9\x03X\r\x00\x00\x00little_endianq\x02\x88u."
    keys = b"\x80\x02]q\x00X\x01\x00\x00\x000q\x01a."
    return magic + proto + sysinfo + main_pickle + keys + storage_raw


def safetensors(tensors):
    header = {}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


# --- GGUF, by hand ------------------------------------------------------------------------

def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf(kvs, tensors=(), version=3, alignment=32, tensor_count=None, kv_count=None):
    """kvs: [(key, type, value)]: type 4 u32, 8 string, 9 array of strings; tensors:
    [(name, dims, ggml_type, offset, nbytes)]."""
    out = b"GGUF" + struct.pack("<I", version)
    out += struct.pack("<Q", len(tensors) if tensor_count is None else tensor_count)
    out += struct.pack("<Q", len(kvs) if kv_count is None else kv_count)
    for key, typ, value in kvs:
        out += gstr(key) + struct.pack("<I", typ)
        if typ == 4:
            out += struct.pack("<I", value)
        elif typ == 8:
            out += gstr(value)
        elif typ == 9:
            out += struct.pack("<I", 8) + struct.pack("<Q", len(value)) + b"".join(gstr(v) for v in value)
    for name, dims, ggml_type, offset, _ in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<I", ggml_type) + struct.pack("<Q", offset)
    out += b"\0" * ((alignment - len(out) % alignment) % alignment)
    data = b""
    for _, _, _, offset, nbytes in tensors:
        if offset + nbytes <= 1 << 20:  # a tensor said to lie far out is not written
            data = data.ljust(offset, b"\0") + b"\x11" * nbytes
    return out + data


def gguf_model(template, extra_kvs=()):
    kvs = [
        ("general.architecture", 8, "llama"),
        ("general.name", 8, "tiny"),
        ("tokenizer.ggml.tokens", 9, ["<s>", "</s>", "a"]),
        ("tokenizer.chat_template", 8, template),
    ] + list(extra_kvs)
    return gguf(kvs, [("tok_embd.weight", [4, 3], 0, 0, 48), ("output.weight", [4, 3], 0, 64, 48)])


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}"
)
TOOLS = (
    "{%- set ns = namespace(found=false) -%}{%- for message in messages -%}{%- if message.role == 'system' -%}"
    "{%- set ns.found = true -%}{%- endif -%}{%- endfor -%}{%- for message in messages %}"
    "{%- if message.tool_calls is defined and message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{{- '<tool_call>' + tool_call.function.name + (tool_call.function.arguments | tojson) + '</tool_call>' }}"
    "{%- endfor %}{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content.strip() + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
)


# --- ONNX, by hand (protobuf) ------------------------------------------------------------

def pb_varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v == 0:
            return out + bytes([b])
        out += bytes([b | 0x80])


def pb(number, payload):
    """A length-delimited field."""
    if isinstance(payload, str):
        payload = payload.encode()
    return pb_varint(number << 3 | 2) + pb_varint(len(payload)) + payload


def pb_int(number, value):
    return pb_varint(number << 3) + pb_varint(value)


def onnx_tensor(name, location=None):
    t = pb_int(1, 4) + pb_int(2, 1) + pb(8, name)  # dims [4], FLOAT
    if location is None:
        return t + pb(9, b"\0" * 16)  # raw_data
    entry = pb(1, "location") + pb(2, location)
    return t + pb(13, entry) + pb_int(14, 1)  # external_data, data_location = EXTERNAL


def onnx_model(initializers=(), nodes=(), functions=()):
    graph = b"".join(pb(1, n) for n in nodes) + pb(2, "g")
    graph += b"".join(pb(5, t) for t in initializers)
    graph += pb(11, pb(1, "x")) + pb(12, pb(1, "y"))
    model = pb_int(1, 8) + pb(2, "pytorch") + pb(3, "2.4") + pb(7, graph) + pb(8, pb_int(2, 17))
    return model + b"".join(pb(25, f) for f in functions)


def onnx_node(op, domain="", attrs=()):
    return pb(1, "x") + pb(2, "y") + pb(4, op) + pb(7, domain) + b"".join(pb(5, a) for a in attrs)


def padded_safetensors(header_len, tensors=1):
    """A safetensors file whose header is exactly `header_len` bytes (padded with spaces)."""
    st = safetensors({f"t{i:04d}": ("F32", [1], b"\0\0\0\0") for i in range(tensors)})
    n = struct.unpack("<Q", st[:8])[0]
    assert n <= header_len, n
    hdr = st[8:8 + n] + b" " * (header_len - n)
    return struct.pack("<Q", header_len) + hdr + st[8 + n:]


def zstd_raw(data):
    """A zstd frame of one raw (stored) block: single segment, 1-byte content size."""
    assert len(data) < 256
    block = 1 | (len(data) << 3)  # last block, raw
    return b"\x28\xb5\x2f\xfd" + bytes([0x20, len(data)]) + block.to_bytes(3, "little") + data


def main():
    # 1. Pickles naming a callable outside the allow-list, every protocol and opcode.
    for proto in range(6):
        bad(f"pickle/global-proto{proto}.pkl", call_global("os", "getcwd", proto=proto),
            "the textbook __reduce__ payload (pickle docs' warning), GLOBAL in protocol 0-5")
    bad("pickle/stack-global.pkl", call_stack_global("os", "getcwd"),
        "STACK_GLOBAL, protocol 4 (picklescan's own test data)")
    bad("pickle/inst.pkl", b"(S'--version'\nipip\nmain\n.",
        "INST opcode (imports and calls in one opcode; fickling's INST handling)")
    bad("pickle/obj.pkl", b"\x80\x02(cpip\nmain\nX\t\x00\x00\x00--versiono.",
        "OBJ opcode instead of REDUCE")
    bad("pickle/newobj.pkl", b"\x80\x02cbuiltins\nobject\n)\x81.",
        "NEWOBJ of a class outside the list")
    bad("pickle/build-setstate.pkl",
        b"\x80\x02ccollections\nOrderedDict\n)R}X\x0b\x00\x00\x00__setstate__cos\ngetcwd\nsb.",
        "BUILD with a __setstate__ taken from a dict (CVE-2025-1716-style picklescan bypass)")
    for module, name, source in [
        ("pip", "main", "pip.main: picklescan bypass, CVE-2025-1716 (GHSA-655q-fx9r-782v)"),
        ("pydoc", "pipepager", "pydoc.pipepager: modelscan/picklescan bypass (JFrog 2025)"),
        ("runpy", "_run_code", "runpy._run_code: picklescan bypass (GHSA-7wx9-6375-f5wh)"),
        ("timeit", "timeit", "timeit.timeit: fickling bypass (Trail of Bits, 2025 advisories)"),
        ("cProfile", "run", "cProfile.run: picklescan bypass (GHSA-p8gj-2r4v-4chm)"),
        ("bdb", "Bdb.run", "bdb.Bdb.run: dotted names through GLOBAL (picklescan 0.0.2x fixes)"),
        ("code", "InteractiveInterpreter.runcode", "code.InteractiveInterpreter: deny-list gap"),
        ("idlelib.autocomplete", "AutoComplete.get_entity", "idlelib: picklescan bypass (2025)"),
        ("lib2to3.pgen2.pgen", "ParserGenerator.make_label", "lib2to3: picklescan bypass (2025)"),
        ("torch.serialization", "load", "torch.load nested (JFrog: nested torch.load)"),
        ("torch._inductor.codecache", "compile_file", "torch._inductor: modelscan bypass"),
        ("torch.jit.unsupported_tensor_ops", "execWrapper", "torch.jit execWrapper (2025 advisories)"),
        ("numpy.testing._private.utils", "runstring", "numpy runstring: modelscan deny-list gap"),
        ("numpy", "load", "numpy.load of an object array, nested"),
        ("_io", "FileIO", "_io.FileIO: file write/read gadget"),
        ("operator", "attrgetter", "operator.attrgetter: getattr gadget (fickling issue 108)"),
        ("functools", "partial", "functools.partial: call gadget"),
        ("builtins", "getattr", "builtins.getattr: gadget to reach anything"),
        ("__builtin__", "eval", "protocol 0 name for builtins (_compat_pickle mapping)"),
        ("asyncio.unix_events", "_UnixSubprocessTransport._start", "asyncio subprocess (JFrog 2025)"),
        ("ctypes", "CDLL", "ctypes: native code"),
        ("webbrowser", "open", "webbrowser.open: exfiltration"),
        ("ensurepip", "_run_pip", "ensurepip._run_pip: picklescan bypass (2025)"),
        ("venv", "create", "venv.create: deny-list gap"),
        ("distutils.file_util", "write_file", "distutils write_file: file write gadget"),
    ]:
        bad(f"pickle/bypass-{module}.{name}.pkl", call_global(module, name), source)
    bad("pickle/memo-stack-global.pkl",
        b"\x80\x04" + sbu("os") + b"\x94" + sbu("getcwd") + b"\x94h\x00h\x01\x93)R.",
        "module and name fetched from the memo (MEMOIZE/BINGET) for STACK_GLOBAL")
    bad("pickle/mark-pop-stack-global.pkl",
        b"\x80\x04" + sbu("collections") + b"(" + sbu("x") + b"1" + sbu("os") + sbu("getcwd") + b"\x93)R.",
        "MARK/POP_MARK to hide which strings STACK_GLOBAL takes (picklescan's stack guess)")
    bad("pickle/dup-stack-global.pkl",
        b"\x80\x04" + sbu("os") + b"2" + b"0" + sbu("getcwd") + b"\x93)R.",
        "DUP/POP to shuffle the operands")
    bad("pickle/ext1.pkl", b"\x80\x02\x82\x01)R.",
        "EXT1: a callable from the copyreg extension registry")
    bad("pickle/unicode-name.pkl", b"\x80\x02cos\ngetcwd\n)R.",
        "plain GLOBAL, as a control")
    bad("pickle/proto0-after-benign.pkl", benign_pickle(2) + call_global("os", "getcwd", proto=0),
        "a second pickle of protocol 0 (no PROTO opcode) after a benign one: a loader reading "
        "to the end runs it (picklescan reads only the first; modelscan/fickling likewise)")
    bad("pickle/proto2-after-benign.pkl", benign_pickle(2) + call_global("os", "getcwd"),
        "a second pickle of protocol 2 after a benign one")
    bad("pickle/three-deep.pkl", benign_pickle(2) + benign_pickle(2) + call_global("pip", "main", proto=1),
        "the third pickle of three, protocol 1")
    for ext in ["bin", "pth", "ckpt", "joblib", "data", "txt", "npy.bak"]:
        bad(f"pickle/extension.{ext}", call_global("os", "getcwd"),
            "non-standard extension: scanners that pick files by extension skip it (picklescan "
            "GHSA-mjqp-26hc-grxg, modelscan)")

    # 2. PyTorch files.
    bad("torch/zip-data-pkl.pt", torch_zip(call_global("os", "getcwd")),
        "torch.save zip with a malicious data.pkl")
    bad("torch/zip-other-prefix.pt", torch_zip(call_global("os", "getcwd"), prefix="anything"),
        "the zip's top folder need not be 'archive'")
    bad("torch/zip-pickle-as-other-name.pt",
        zip_bytes([("archive/data.pkl", torch_tensor_pickle()), ("archive/data/0", b"\0" * 16),
                   ("archive/extra.pkl", call_global("os", "getcwd")), ("archive/version", b"3\n")]),
        "a second pickle member with another name (torch reads only data.pkl; others may not)")
    bad("torch/legacy-main.pt", torch_legacy(call_global("os", "getcwd"), b""),
        "legacy torch.save: the fourth pickle (the state dict) is malicious")
    bad("torch/legacy-magic.pt",
        call_global("os", "getcwd") + b"\x80\x02M\xe9\x03.",
        "legacy torch.save: the magic-number pickle itself is malicious")
    le_count = struct.pack("<q", 4)
    bad("torch/legacy-storage-pickle.pt",
        torch_legacy(torch_tensor_pickle(), call_global("os", "getcwd")),
        "legacy format whose storage area is itself a pickle: a loader reading pickles to the "
        "end runs it")

    # 3. Zips that different readers read differently.
    evil = call_global("os", "getcwd")
    plain = torch_zip(torch_tensor_pickle(), [("0", b"\0" * 16)])
    bad("zip/prefixed-by-pickle.pt", benign_pickle(2) + zip_bytes([("archive/data.pkl", evil)]),
        "a pickle before a zip: torch.load sees a pickle, zipfile a zip (polyglot)")
    bad("zip/prefixed-by-junk.zip", b"\0" * 100 + zip_bytes([("data.pkl", evil)]),
        "a zip that does not start at byte 0: Python's zipfile finds it anyway")
    bad("zip/appended-after-end.zip", zip_bytes([("data.pkl", evil)]) + b"trailing bytes",
        "bytes after the end record (zipfile accepts them within 64 KiB)")
    bad("zip/pickle-appended.pt", plain + evil,
        "a pickle appended after the end record")
    z = bytearray(zip_bytes([("archive/data.pkl", evil)]))
    cd = z.rfind(b"PK\x01\x02")
    name_at = cd + 46
    z[name_at:name_at + 16] = b"archive/data.txt"  # central name differs from the local one
    bad("zip/local-central-names-differ.zip", bytes(z),
        "local header and central directory name different files (Zip Slip-style confusion; "
        "picklescan reads central names, streaming readers local ones)")
    z = bytearray(zip_bytes([("data.pkl", evil)]))
    z[6] |= 1  # the encrypted flag on the local header only
    bad("zip/flag-bits.zip", bytes(z),
        "general-purpose flag bits that make some readers skip a member (encrypted bit; "
        "picklescan bypass with zip flag bits, 2025)")
    import warnings
    warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it is asked to write
    two = zip_bytes([("data.pkl", torch_tensor_pickle()), ("data.pkl", evil)])
    bad("zip/name-twice.zip", two, "the same name twice: readers take the first or the last")
    bad("zip/nested-zip.zip", zip_bytes([("inner.zip", zip_bytes([("data.pkl", evil)]))]),
        "a zip in a zip")
    bad("zip/nested-tar.tar", tar_bytes([("model/inner.zip", zip_bytes([("data.pkl", evil)]))]),
        "a zip in a tar")
    bad("zip/deflated-member.zip", zip_bytes([("data.pkl", evil)], zipfile.ZIP_DEFLATED),
        "a deflated member")

    # 4. NumPy.
    objects = b"\x80\x02cos\ngetcwd\n)R."
    for i, descr in enumerate(["'|O'", "'O'", "'<O'", "'=O'", "'O8'", "'object'", "\"|O\"", "'|O8'"]):
        bad(f"numpy/object-{i}.npy",
            npy("{'descr': %s, 'fortran_order': False, 'shape': (1,), }" % descr, objects),
            f"an object array spelled {descr}: a header read by substring misses it")
    bad("numpy/double-quoted-keys.npy",
        npy('{"descr": "|O", "fortran_order": False, "shape": (1,)}', objects),
        "double-quoted keys: np.load parses the header as a Python literal")
    bad("numpy/key-twice.npy",
        npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'descr': '|O'}", objects),
        "'descr' given twice: the literal's last value wins")
    bad("numpy/structured.npy",
        npy("{'descr': [('a', '<f4'), ('b', [('c', '|O')])], 'fortran_order': False, 'shape': (1,), }", objects),
        "an object field nested in a structured dtype")
    bad("numpy/version3.npy",
        npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", objects, version=(3, 0)),
        "format version 3 header (UTF-8)")
    bad("numpy/npz-object.npz",
        zip_bytes([("arr_0.npy", npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", objects))]),
        "an object array inside an .npz")

    # 5. Compressed containers (joblib, tarballs).
    bad("compressed/gzip-pickle.joblib", gzip.compress(evil),
        "joblib.dump(compress='gzip'): a gzip'd pickle; joblib.load decompresses by magic")
    bad("compressed/zlib-pickle.joblib", zlib.compress(evil),
        "joblib.dump(compress='zlib'): a zlib stream")
    bad("compressed/bz2-pickle.joblib", bz2.compress(evil), "joblib.dump(compress='bz2')")
    bad("compressed/xz-pickle.joblib", lzma.compress(evil), "joblib.dump(compress='xz')")
    bad("compressed/lzma-pickle.joblib", lzma.compress(evil, format=lzma.FORMAT_ALONE),
        "joblib.dump(compress='lzma'): the .lzma (alone) format")
    bad("compressed/model.tar.gz", tar_bytes([("model/data.pkl", evil)], mode="w:gz"),
        "a model shipped as .tar.gz (Hugging Face-style archives, SageMaker model.tar.gz)")
    bad("compressed/model.tar.bz2", tar_bytes([("model/data.pkl", evil)], mode="w:bz2"), "a .tar.bz2")
    bad("compressed/model.tar.xz", tar_bytes([("model/data.pkl", evil)], mode="w:xz"), "a .tar.xz")
    bad("compressed/gzip-second-member.gz", gzip.compress(benign_pickle(2)) + gzip.compress(evil),
        "a gzip of two members, a benign pickle then a malicious one: gzip readers join them")
    bad("compressed/gzip-in-gzip.gz", gzip.compress(gzip.compress(evil)), "gzip within gzip")
    bad("compressed/gzip-torch-zip.pt.gz", gzip.compress(torch_zip(evil)), "a gzip'd torch zip")

    # Found by a red-team pass over the first version of these inspectors (each a class).
    bad("redteam/proto0-header.pkl", b"\x80\x00cos\ngetcwd\n)R.",
        "PROTO 0 and 1 are legal: a pickle that starts \\x80\\x00 was not claimed")
    bad("redteam/proto1-header.pkl", b"\x80\x01cos\ngetcwd\n)R.", "PROTO 1")
    bad("redteam/put-with-space.pkl", b"Np 0\n0cos\ngetcwd\n(tR.",
        "a PUT key CPython reads with spaces or _ (PyLong_FromString) made the head 'malformed'")
    bad("redteam/after-mismodelled.pkl", b"\x80\x02N." + b"Np0_0\n0cos\ngetcwd\n(tR.",
        "a second pickle the scanner thought malformed was taken for data")
    bad("redteam/memo-carried.pkl",
        b"\x80\x04\x8c\x02os\x94\x8c\x06getcwd\x94\x86." + b"\x80\x04h\x00h\x01\x93)R.",
        "one Unpickler, load() twice: the second pickle reads the first's memo")

    def alone(data, known):
        flt = [{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 16}]
        st = bytearray(lzma.compress(data, format=lzma.FORMAT_ALONE, filters=flt))
        if known:
            st[5:13] = struct.pack("<Q", len(data))
        return bytes(st)

    small = bytearray(lzma.compress(evil, format=lzma.FORMAT_ALONE))
    small[1:5] = struct.pack("<I", 256)
    bad("redteam/lzma-small-dictionary.joblib", bytes(small),
        "a .lzma header with a 256-byte dictionary: joblib reads ']\\x00' as lzma whatever follows")
    bad("redteam/lzma-empty-then-evil.joblib", alone(b"", True) + alone(evil, False),
        "an empty known-size .lzma stream, then the pickle in a second stream")
    bad("redteam/joblib-zfile.joblib", b"ZF" + "{:#x}".format(len(evil)).ljust(19).encode() + zlib.compress(evil),
        "joblib's old ZF format (numpy_pickle_compat.write_zfile)")
    bad("redteam/zstd-skippable-first.pkl.zst",
        struct.pack("<II", 0x184D2A5E, 0) + zstd_raw(evil),
        "a zstd skippable frame first (pzstd writes one): zstd readers skip it")
    bad("redteam/zstd-plain.pkl.zst", zstd_raw(evil), "a zstd frame")

    # Resource attacks on the decompressors: refused before the memory or the disk is spent.
    bad("compressed/gzip-bomb.gz", gzip.compress(b"\0" * (256 << 20), 9),
        "a gzip bomb: 256 MiB of zeros in 250 KiB (expansion bounded by the file's real size)")
    bad("compressed/xz-huge-dictionary.xz",
        lzma.compress(evil, format=lzma.FORMAT_XZ,
                      filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 30}]),
        "an xz block asking for a 1 GiB dictionary (the decoder allocates it up front)")
    bad("compressed/lzma-huge-dictionary.lzma",
        lzma.compress(evil, format=lzma.FORMAT_ALONE,
                      filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 30}]),
        "an .lzma stream asking for a 1 GiB dictionary")
    noise = bytes((i * 7919 + (i >> 3) * 104729) % 251 for i in range(200_000))
    bad("compressed/zlib-damaged.joblib", zlib.compress(evil + noise)[:-1000] + b"\xff" * 1000,
        "a zlib stream damaged after the pickle: a streaming loader unpickles before the damage")

    # 6. GGUF.
    for i, template in enumerate([
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
        "{{ x()._module.__builtins__['__import__']('os').getcwd() }}{% endif %}{% endfor %}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.getcwd() }}",
        "{{ cycler.__init__.__globals__.os.getcwd() }}",
        "{{ lipsum.__globals__['os'].getcwd() }}",
        "{{ messages|attr('__class__') }}",
        "{{ ''['__cla' ~ 'ss__'] }}",
        "{% set k = '_' * 2 ~ 'class' ~ '_' * 2 %}{{ messages[k] }}",
        "{{ messages|map(attribute='__class__')|list }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ ''|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    ]):
        bad(f"gguf/template-{i}.gguf", gguf_model(template),
            "tokenizer.chat_template server-side template injection (CVE-2024-34359, "
            "llama-cpp-python; payloads from the advisory and Jinja SSTI write-ups)")
    bad("gguf/tensor-outside.gguf",
        gguf([("general.architecture", 8, "llama")], [("w", [4], 0, 1 << 40, 16)]),
        "a tensor whose data lies past the end of the file (GGML out-of-bounds reads, "
        "CVE-2024-25664 family)")
    bad("gguf/huge-kv-count.gguf", gguf([("general.architecture", 8, "llama")], kv_count=1 << 62),
        "a metadata count of 2^62 (GGUF parser allocation bugs, CVE-2024-21836)")
    bad("gguf/huge-string.gguf",
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60) + b"k",
        "a key length of 2^60 (CVE-2024-21802-style heap overflow)")
    bad("gguf/dims-overflow.gguf",
        gguf([("general.architecture", 8, "llama")], [("w", [1 << 62, 1 << 62], 0, 0, 16)]),
        "tensor dimensions whose product overflows (CVE-2024-25664)")
    bad("gguf/template-in-array.gguf",
        gguf_model(CHATML, [("tokenizer.chat_template.tool_use", 8, "{{ ''.__class__ }}")]),
        "a second, named chat template (tokenizer.chat_template.NAME) carrying the payload")

    # 7. ONNX.
    for i, location in enumerate(["../../../../etc/passwd", "/etc/shadow", "a/../../x", "..\\..\\x"]):
        bad(f"onnx/external-traversal-{i}.onnx", onnx_model([onnx_tensor("w", location)]),
            "external_data location outside the model's directory (CVE-2024-27318, CVE-2024-5187)")
    sub = pb(1, "then") + pb(6, onnx_model([onnx_tensor("w", "../secret")])[0:0] +
                            pb(5, onnx_tensor("w", "../secret")))
    bad("onnx/traversal-in-subgraph.onnx", onnx_model(nodes=[onnx_node("If", attrs=[sub])]),
        "the traversal in an If node's then_branch subgraph initializer")
    attr_tensor = pb(1, "value") + pb(5, onnx_tensor("c", "/proc/self/environ"))
    bad("onnx/traversal-in-constant.onnx", onnx_model(nodes=[onnx_node("Constant", attrs=[attr_tensor])]),
        "the traversal in a Constant node's value attribute")
    func = pb(1, "f") + pb(2, "local") + pb(7, onnx_node("Constant", attrs=[attr_tensor]))
    bad("onnx/traversal-in-function.onnx", onnx_model(functions=[func]),
        "the traversal in a model-local function's node")
    bad("onnx/renamed.bin", onnx_model([onnx_tensor("w", "../../x")]),
        "an ONNX model not named .onnx (onnxruntime loads any path)")
    bad("onnx/truncated.onnx", onnx_model([onnx_tensor("w")])[:-5], "a model cut short")

    # 8. Keras.
    h5_weights = b"\x89HDF\r\n\x1a\n" + b"\0" * 504 + b"layers/dense/vars/0" + b"\0" * 64

    def keras_file(config):
        return zip_bytes([("metadata.json", json.dumps({"keras_version": "3.6.0"}).encode()),
                          ("config.json", json.dumps(config).encode() if isinstance(config, dict) else config),
                          ("model.weights.h5", h5_weights)])

    def functional(layers):
        return {"module": "keras.src.models.functional", "class_name": "Functional",
                "config": {"name": "m", "layers": layers}, "registered_name": "Functional"}

    dense = {"module": "keras.layers", "class_name": "Dense", "config": {"units": 4, "activation":
             {"module": "keras.activations", "class_name": "function", "config": "relu",
              "registered_name": "relu"}}, "registered_name": None}
    bad("keras/lambda.keras", keras_file(functional([dense, {"module": "keras.layers", "class_name": "Lambda",
        "config": {"function": {"class_name": "__lambda__", "config": {"code": "4wEAAAAA"}}}}])),
        "a Lambda layer: marshalled Python code run at load (CVE-2024-3660)")
    bad("keras/module-builtins.keras", keras_file(functional([dense, {"module": "builtins",
        "class_name": "function", "config": "exec", "registered_name": "exec"}])),
        "an object from the module builtins (safe_mode bypass, CVE-2025-1550)")
    bad("keras/custom-registered.keras", keras_file(functional([dict(dense, module="keras.layers",
        registered_name="evilpkg>Dense")])), "a registered custom object: code outside Keras")
    bad("keras/escaped-lambda.keras",
        keras_file(json.dumps(functional([dense])).replace('"Dense"', '"\\u004cambda"').encode()),
        "Lambda spelled with a JSON escape")
    bad("keras/nested-module.keras", keras_file(functional([dict(dense, config={"units": 4,
        "kernel_initializer": {"module": "keras.src.utils.file_utils", "class_name": "x"},
        "activation": {"module": "os", "class_name": "function", "config": "system"}})])),
        "a foreign module deep in a layer's config")
    bad("keras/get-file.keras", keras_file(functional([dense, {"module": "keras.src.utils.file_utils",
        "class_name": "function", "config": "get_file", "registered_name": None}])),
        "keras.utils.get_file reached from a config in safe mode (CVE-2025-8747)")
    bad("keras/legacy.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 200 + b"model_config" + b"\0" * 8 +
        json.dumps({"class_name": "Lambda"}).encode() + b"\0" * 100,
        "a legacy HDF5 Keras model (its model_config is not parsed: refused by default)")
    bad("keras/legacy-userblock.h5", b"\0" * 512 + b"\x89HDF\r\n\x1a\n" + b"keras_version" + b"\0" * 64,
        "a legacy model behind a 512-byte user block (found by its name)")

    # --- benign ------------------------------------------------------------------------
    for proto in range(6):
        good(f"pickle/plain-proto{proto}.pkl", benign_pickle(proto) if proto in (0, 2) else benign_pickle(2),
             "a dict of numbers and strings")
    good("torch/state-dict.pt", torch_zip(torch_tensor_pickle(), [("0", b"\x80" * 16)]),
         "torch.save of a state dict (zip format)")
    good("torch/legacy.pt", torch_legacy(torch_tensor_pickle(), le_count + b"\x80\x02\x00\x00" * 4),
         "legacy torch.save whose raw storage bytes start like a pickle (0x80 0x02)")
    good("torch/legacy-2.pt", torch_legacy(torch_tensor_pickle(), struct.pack("<q", 128) + b"\x80" * 512),
         "legacy torch.save whose storage count's first byte is 0x80")
    good("numpy/float.npy",
         npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", b"\0" * 16),
         "a float32 array")
    good("numpy/structured.npy",
         npy("{'descr': [('x', '<f4'), ('y', '<i8', (2,)), ('name', '<U8')], 'fortran_order': False, 'shape': (1,), }",
             b"\0" * 52), "a structured array")
    good("numpy/strings.npy", npy("{'descr': '|S5', 'fortran_order': True, 'shape': (), }", b"hello"),
         "a bytes scalar")
    good("numpy/datetime.npy", npy("{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8),
         "a datetime64 array")
    good("numpy/arrays.npz", zip_bytes([("a.npy", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8)),
                                        ("b.npy", npy("{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }", b"\0" * 4))],
                                       zipfile.ZIP_DEFLATED), "np.savez_compressed of two arrays")
    good("safetensors/model.safetensors",
         safetensors({"w": ("F32", [2, 2], b"\0" * 16), "b": ("F16", [2], b"\0" * 4)}), "a safetensors file")
    for name, text in [
        ("city.csv", "city,population\nParis,2100000\nLyon,513000\n"),
        ("ids.csv", "id,name\n1,foo\n2,bar\n"),
        ("int.csv", "I1,I2\n3,4\n"),
        ("sentences.csv", "S'quoted',x\n'a',b\n"),
        ("paren.csv", "(a,b)\n(c,d)\n"),
        ("p.csv", "p0,p1\n1,2\n"),
        ("labels.tsv", "cat\tdog\nc1\tc2\n"),
        ("notes.txt", "Training notes.\n"),
        ("data.jsonl", '{"text": "hello"}\n'),
        ("config.json", '{"hidden_size": 4096}\n'),
        ("vocab.txt", "c\nos\nsystem\n"),
    ]:
        good(f"text/{name}", text.encode(), "text: must pass (README: text and CSV fail to parse as a pickle within a few bytes)")
    good("redteam/gzip-zero-padded.csv.gz", gzip.compress(b"a,b\n1,2\n") + b"\0" * 512,
         "a gzip padded with zeros (tape and block devices): Python's gzip reads it")
    good("redteam/zstd-trailing-skippable.csv.zst",
         zstd_raw(b"a,b\n1,2\n") + struct.pack("<II", 0x184D2A50, 4) + b"seek",
         "a zstd frame followed by a skippable frame (the seekable format's table)")
    good("safetensors/header-640.safetensors", padded_safetensors(0x280),
         "a safetensors header whose length's bytes begin 80 02 (read as PROTO 2 before)")
    good("compressed/text.gz", gzip.compress(b"city,population\nParis,2100000\n"), "a gzip'd CSV")
    good("compressed/dataset.tar.gz", tar_bytes([("data/train.jsonl", b'{"text": "a"}\n')], mode="w:gz"),
         "a dataset tarball")
    # A safetensors header of 40056 bytes: its first bytes (78 9c) are a zlib header too.
    good("safetensors/zlib-looking-header.safetensors", padded_safetensors(0x9c78, 400),
         "a safetensors file whose header length's bytes read as a zlib header (78 9c)")
    good("compressed/weights.safetensors.xz",
         lzma.compress(safetensors({"w": ("F32", [2], b"\0" * 8)})), "an xz'd safetensors file")
    for name, template in [("chatml", CHATML), ("llama3", LLAMA3), ("mistral", MISTRAL), ("tools", TOOLS)]:
        good(f"gguf/{name}.gguf", gguf_model(template), f"a GGUF model with the {name} chat template")
    good("onnx/inline.onnx", onnx_model([onnx_tensor("w")], [onnx_node("Relu")]), "an ONNX model with inline weights")
    good("onnx/external.onnx", onnx_model([onnx_tensor("w", "model.onnx.data")], [onnx_node("Relu")]),
         "an ONNX model with its weights in model.onnx.data beside it")
    good("onnx/custom-op.onnx", onnx_model(nodes=[onnx_node("MyOp", domain="com.example")]),
         "a custom operator domain (admitted unless the policy refuses custom operators)")
    good("keras/dense.keras", keras_file(functional([dense])), "a Keras 3 model of Keras' own layers")
    good("hdf5/dataset.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 504 + b"train/images" + b"\0" * 64,
         "an HDF5 dataset (no Keras model)")
    good("gguf/no-template.gguf", gguf([("general.architecture", 8, "llama")], [("w", [4], 0, 0, 16)]),
         "a GGUF model without a template")

    with open(os.path.join(OUT, "index.tsv"), "w") as f:
        for verdict, name, source in CASES:
            f.write(f"{verdict}\t{name}\t{source}\n")
    print(f"{sum(1 for c in CASES if c[0] == 'malicious')} malicious, "
          f"{sum(1 for c in CASES if c[0] == 'benign')} benign files in {OUT}")


main()
