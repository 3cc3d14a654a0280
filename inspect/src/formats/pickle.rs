//! Pickle scanning without unpickling.
//!
//! Loading a pickle runs it: `GLOBAL`/`STACK_GLOBAL`/`INST` import any callable by name, and
//! `REDUCE`/`OBJ`/`NEWOBJ`/`BUILD` call what was imported. Every callable a pickle can call
//! must first be imported by one of those three opcodes (or come from the copyreg extension
//! registry, `EXT1`/`EXT2`/`EXT4`, which is refused outright), so the scanner checks every
//! import against an allow-list and never needs to follow the calls.
//!
//! `STACK_GLOBAL` takes the module and the name from the stack, where a hostile pickle can
//! build them with any sequence of pushes, pops, marks and memo reads. So the scanner runs
//! the unpickler's stack machine (values reduced to "this string" or "something else",
//! marks as Python's metastack) over every opcode: an operand that is not a plain string is
//! refused, never guessed. A file may hold several pickles back to back (PyTorch's legacy
//! format writes five, then raw storage bytes): each pickle is scanned to its `STOP`, and
//! another is scanned if the bytes after it start with a `PROTO` opcode.
//!
//! Memory is bounded: strings kept for name resolution are short, the stack, the metastack
//! and the memo have a bounded number of entries, and payloads (bytes, long strings) are
//! skipped, never held.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use serde::Deserialize;

use crate::inspector::{Inspector, Nested};
use crate::refusal::Refusal;
use crate::sniff::{Kind, Kinds};

/// Callables a plain PyTorch, NumPy or `collections` checkpoint imports: rebuilding tensors
/// and parameters from storages, storage types, dtypes and devices, NumPy arrays and
/// scalars, and plain containers. Nothing here runs code chosen by the file. README.md
/// ("Content policy") lists them; `[models] pickle_allow` adds to them.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "collections.OrderedDict",
    "collections.defaultdict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.complex",
    "builtins.bytearray",
    "__builtin__.set",
    "_codecs.encode",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Size",
    "torch.device",
    "torch.Tensor",
    "torch.nn.parameter.Parameter",
    "torch.storage.UntypedStorage",
    "torch.storage.TypedStorage",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
    "torch.LongStorage",
    "torch.IntStorage",
    "torch.ShortStorage",
    "torch.CharStorage",
    "torch.ByteStorage",
    "torch.BoolStorage",
    "torch.ComplexFloatStorage",
    "torch.ComplexDoubleStorage",
    "torch.float16",
    "torch.float32",
    "torch.float64",
    "torch.bfloat16",
    "torch.int8",
    "torch.int16",
    "torch.int32",
    "torch.int64",
    "torch.uint8",
    "torch.bool",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
];

/// Longest module or name the scanner keeps as a string (longer ones are "something else").
const MAX_NAME_LEN: usize = 128;
/// Most entries on the stack and the metastack together, and most in the memo: with
/// strings shared (`Rc`), a scan holds at most a few tens of MiB whatever the input. The
/// `pickle` module batches containers 1 000 items at a time, so real pickles stay far below.
const MAX_VALUES: usize = 1 << 18;

/// The callables a pickle may import, as `module.name`.
#[derive(Debug, Clone)]
pub struct AllowList {
    allowed: BTreeSet<String>,
}

impl Default for AllowList {
    fn default() -> Self {
        AllowList::new(DEFAULT_ALLOWED.iter().copied())
    }
}

impl AllowList {
    /// Exactly `names` (`module.name` each).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        AllowList {
            allowed: names.into_iter().map(str::to_owned).collect(),
        }
    }

    /// The default list plus `more`.
    pub fn with<'a>(more: impl IntoIterator<Item = &'a str>) -> Self {
        AllowList::new(DEFAULT_ALLOWED.iter().copied().chain(more))
    }

    fn allows(&self, module: &str, name: &str) -> bool {
        self.allowed.contains(&format!("{module}.{name}"))
    }
}

/// What to do with pickles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PickleRule {
    /// Every pickle is refused.
    Refuse,
    /// Pickles pass if they import only allowed callables.
    Scan,
    /// Pickles pass unexamined.
    Allow,
}

/// Pickles (protocols 2 to 5, by their first opcode), under `rule`.
#[derive(Debug, Clone)]
pub struct PickleInspector {
    pub rule: PickleRule,
    pub allow: AllowList,
}

impl Inspector for PickleInspector {
    fn name(&self) -> &'static str {
        "pickle"
    }

    fn claims(&self, kinds: Kinds, head: &[u8], _path: &str) -> bool {
        // A zip's magic reads as PERSID, which only an unpickler with a `persistent_load`
        // accepts; the one loader that has it (PyTorch's legacy format) checks for that magic
        // first and reads such a file as a zip — as the gate does.
        let zip_magic = head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06");
        kinds.has(Kind::Pickle) || (!zip_magic && looks_like_pickle(head))
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        _size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        match self.rule {
            PickleRule::Allow => {
                nested.note(path, "pickle", serde_json::json!({"scanned": false}));
                Ok(())
            }
            PickleRule::Refuse => Err(Refusal::PickleRefused),
            PickleRule::Scan => {
                let scanned = scan(file, &self.allow)?;
                nested.note(
                    path,
                    "pickle",
                    serde_json::json!({"pickles": scanned.pickles, "imports": scanned.imports}),
                );
                Ok(())
            }
        }
    }
}

/// What a scan found in a pickle that passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Pickles in the file (back to back).
    pub pickles: u32,
    /// The distinct callables imported, `module.name`, all on the allow-list.
    pub imports: BTreeSet<String>,
    /// Bytes of the pickles (anything after the last one is data, not scanned).
    pub pickle_bytes: u64,
}

/// One stack value, reduced to what name resolution needs.
#[derive(Debug, Clone)]
enum Value {
    Str(Rc<str>),
    Other,
}

/// One interpretation of the unpickler's stack machine, over reduced values.
#[derive(Debug, Default)]
struct State {
    stack: Vec<Value>,
    metastack: Vec<Vec<Value>>,
    memo: HashMap<u64, Value>,
    values: usize,
}

impl State {
    fn push(&mut self, value: Value) -> Result<(), Refusal> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(Refusal::PickleTooComplex(
                "more than 2^18 values on the stack",
            ));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self, at: u64) -> Result<Value, Refusal> {
        self.values = self.values.saturating_sub(1);
        self.stack.pop().ok_or(Refusal::PickleMalformed {
            at,
            why: "stack underflow",
        })
    }

    fn pop_n(&mut self, n: usize, at: u64) -> Result<(), Refusal> {
        for _ in 0..n {
            self.pop(at)?;
        }
        Ok(())
    }

    fn mark(&mut self) -> Result<(), Refusal> {
        if self.metastack.len() >= MAX_VALUES {
            return Err(Refusal::PickleTooComplex("too many marks"));
        }
        let stack = std::mem::take(&mut self.stack);
        self.metastack.push(stack);
        Ok(())
    }

    /// Python's `pop_mark`: the items since the last mark; the stack before it comes back.
    fn pop_mark(&mut self, at: u64) -> Result<Vec<Value>, Refusal> {
        let outer = self
            .metastack
            .pop()
            .ok_or(Refusal::PickleMalformed { at, why: "no mark" })?;
        let items = std::mem::replace(&mut self.stack, outer);
        self.values = self.values.saturating_sub(items.len());
        Ok(items)
    }

    fn top(&self, at: u64) -> Result<Value, Refusal> {
        self.stack.last().cloned().ok_or(Refusal::PickleMalformed {
            at,
            why: "empty stack",
        })
    }

    fn memo_put(&mut self, key: u64, at: u64) -> Result<(), Refusal> {
        let value = self.top(at)?;
        if self.memo.len() >= MAX_VALUES {
            return Err(Refusal::PickleTooComplex("more than 2^18 memo entries"));
        }
        self.memo.insert(key, value);
        Ok(())
    }

    /// POP: the top item, or the mark when the stack since it is empty.
    fn pop_or_mark(&mut self, at: u64) -> Result<(), Refusal> {
        if self.stack.is_empty() {
            self.pop_mark(at).map(drop)
        } else {
            self.pop(at).map(drop)
        }
    }

    fn memo_get(&mut self, key: u64, at: u64) -> Result<(), Refusal> {
        let value = self
            .memo
            .get(&key)
            .cloned()
            .ok_or(Refusal::PickleMalformed {
                at,
                why: "memo key never stored",
            })?;
        self.push(value)
    }
}

/// The unpickler's stack machine, under every interpretation still alive. A later pickle of
/// a file is read by a fresh unpickler (`pickle.load` again: an empty memo) or by the same
/// one (`Unpickler.load` again: the memo of the pickles before): the opcodes are the same,
/// the memo differs, so both are run side by side. An interpretation that fails (a memo key
/// it never stored) ends; the machine fails when all have.
#[derive(Debug)]
struct Machine {
    states: Vec<State>,
}

impl Machine {
    /// A fresh unpickler, and one that carries `memo` if given.
    fn new(carried: Option<HashMap<u64, Value>>) -> Self {
        let mut states = vec![State::default()];
        if let Some(memo) = carried {
            states.push(State {
                memo,
                ..State::default()
            });
        }
        Machine { states }
    }

    /// The memo a next pickle's reused unpickler would carry: the carried interpretation's
    /// if it lived, else the fresh one's.
    fn into_memo(mut self) -> Option<HashMap<u64, Value>> {
        self.states.pop().map(|s| s.memo)
    }

    /// Runs `f` on every live interpretation; one that fails to parse ends, unless it is the
    /// last; any other refusal is the file's.
    fn each(
        &mut self,
        mut f: impl FnMut(&mut State) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let mut first_error = None;
        let mut i = 0;
        while i < self.states.len() {
            match f(&mut self.states[i]) {
                Ok(()) => i += 1,
                Err(e @ Refusal::PickleMalformed { .. }) => {
                    first_error.get_or_insert(e);
                    self.states.remove(i);
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) if self.states.is_empty() => Err(e),
            _ => Ok(()),
        }
    }

    fn push(&mut self, value: Value) -> Result<(), Refusal> {
        self.each(|s| s.push(value.clone()))
    }

    fn pop(&mut self, at: u64) -> Result<(), Refusal> {
        self.each(|s| s.pop(at).map(drop))
    }

    fn pop_n(&mut self, n: usize, at: u64) -> Result<(), Refusal> {
        self.each(|s| s.pop_n(n, at))
    }

    fn mark(&mut self) -> Result<(), Refusal> {
        self.each(State::mark)
    }

    fn pop_mark(&mut self, at: u64) -> Result<(), Refusal> {
        self.each(|s| s.pop_mark(at).map(drop))
    }

    fn pop_or_mark(&mut self, at: u64) -> Result<(), Refusal> {
        self.each(|s| s.pop_or_mark(at))
    }

    fn dup(&mut self, at: u64) -> Result<(), Refusal> {
        self.each(|s| {
            let top = s.top(at)?;
            s.push(top)
        })
    }

    fn memo_put(&mut self, key: u64, at: u64) -> Result<(), Refusal> {
        self.each(|s| s.memo_put(key, at))
    }

    /// MEMOIZE: the key is the memo's length, in each interpretation.
    fn memoize(&mut self, at: u64) -> Result<(), Refusal> {
        self.each(|s| {
            let key = s.memo.len() as u64;
            s.memo_put(key, at)
        })
    }

    fn memo_get(&mut self, key: u64, at: u64) -> Result<(), Refusal> {
        self.each(|s| s.memo_get(key, at))
    }

    /// STACK_GLOBAL: `(module, name)` popped in each interpretation, checked by `check`,
    /// then the callable pushed.
    fn stack_global(
        &mut self,
        at: u64,
        mut check: impl FnMut(&str, &str) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        self.each(|s| {
            let name = s.pop(at)?;
            let module = s.pop(at)?;
            let (Value::Str(module), Value::Str(name)) = (module, name) else {
                return Err(Refusal::PickleOpaqueImport(
                    "STACK_GLOBAL on values that are not strings",
                ));
            };
            check(&module, &name)?;
            s.push(Value::Other)
        })
    }
}

/// A reader that counts the bytes it hands out.
struct Counted<R> {
    inner: R,
    at: u64,
}

impl<R: BufRead> Counted<R> {
    fn byte(&mut self) -> Result<Option<u8>, Refusal> {
        let buf = self.inner.fill_buf()?;
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        self.inner.consume(1);
        self.at += 1;
        Ok(Some(b))
    }

    fn need(&mut self) -> Result<u8, Refusal> {
        self.byte()?.ok_or(Refusal::PickleMalformed {
            at: self.at,
            why: "ends inside an opcode",
        })
    }

    fn le(&mut self, n: usize) -> Result<u64, Refusal> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.need()?) << (8 * i);
        }
        Ok(v)
    }

    /// `n` bytes: kept (as a string, if UTF-8) when short, skipped otherwise.
    fn payload(&mut self, n: u64) -> Result<Value, Refusal> {
        if n as usize <= MAX_NAME_LEN {
            let mut buf = vec![0u8; n as usize];
            self.inner
                .read_exact(&mut buf)
                .map_err(|_| self.truncated())?;
            self.at += n;
            return Ok(String::from_utf8(buf).map_or(Value::Other, |s| Value::Str(s.into())));
        }
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.at += skipped;
        if skipped != n {
            return Err(self.truncated());
        }
        Ok(Value::Other)
    }

    /// A newline-terminated argument (text opcodes): kept when short.
    fn line(&mut self) -> Result<Option<String>, Refusal> {
        let mut kept = Vec::new();
        let mut long = false;
        loop {
            let b = self.need()?;
            if b == b'\n' {
                break;
            }
            if kept.len() < MAX_NAME_LEN {
                kept.push(b);
            } else {
                long = true;
            }
        }
        Ok((!long).then(|| String::from_utf8(kept).ok()).flatten())
    }

    fn truncated(&self) -> Refusal {
        Refusal::PickleMalformed {
            at: self.at,
            why: "ends inside an opcode's data",
        }
    }
}

/// Scans every pickle in `reader` (back to back from its start) against `allow`.
///
/// The first must be a whole pickle. After it a loader may read more (PyTorch's legacy
/// format reads five, a loop reads to the end; any may be of protocol 0 or 1, with no `PROTO`
/// to announce it), so whatever follows is scanned as pickles too, one after another, until
/// bytes that no unpickler gets through: from there on it is data (a legacy checkpoint's raw
/// storage). An unpickler runs each opcode as it reads it, and every callable must be
/// imported before it is called, so an import refused anywhere before those bytes refuses
/// the file: a pickle cut short after its call is still refused.
pub fn scan(reader: impl Read, allow: &AllowList) -> Result<Scanned, Refusal> {
    let mut input = Counted {
        inner: io::BufReader::with_capacity(64 << 10, reader),
        at: 0,
    };
    let mut scanned = Scanned::default();
    let mut memo = scan_one(&mut input, allow, &mut scanned.imports, None)?;
    scanned.pickles = 1;
    scanned.pickle_bytes = input.at;
    while !input.inner.fill_buf()?.is_empty() {
        match scan_one(&mut input, allow, &mut scanned.imports, memo) {
            Ok(carried) => {
                memo = carried;
                scanned.pickles += 1;
                scanned.pickle_bytes = input.at;
            }
            Err(Refusal::PickleMalformed { .. }) => break,
            Err(refusal) => return Err(refusal),
        }
    }
    Ok(scanned)
}

/// Whether `head`, a file's first bytes, reads as the start of a pickle of protocol 0 or 1
/// (which has no `PROTO` opcode to sniff): its opcodes parse, with a plausible stack, up to a
/// `STOP`, an import, or the end of `head` after at least one whole opcode. Text, CSV, JSON
/// and binary formats fail within a few bytes.
pub fn looks_like_pickle(head: &[u8]) -> bool {
    if head.first().is_none_or(|b| *b == 0x80) {
        return false;
    }
    let mut input = Counted {
        inner: io::BufReader::new(head),
        at: 0,
    };
    let mut m = Machine::new(None);
    let (nothing, mut imports) = (AllowList::new([]), BTreeSet::new());
    let mut ops = 0;
    loop {
        let at = input.at;
        let op = match input.byte() {
            Ok(Some(op)) => op,
            Ok(None) => return ops >= 1,
            Err(_) => return false,
        };
        match step(op, at, &mut input, &mut m, &nothing, &mut imports) {
            Ok(true) => return true,
            Ok(false) => ops += 1,
            // Every import is refused here: reaching one means it parsed as a pickle.
            Err(Refusal::PickleImport(_) | Refusal::PickleOpaqueImport(_)) => return true,
            Err(Refusal::PickleMalformed { why, .. }) if why.starts_with("ends inside") => {
                return ops >= 1
            }
            Err(_) => return false,
        }
    }
}

/// Checks an import and records it. A module or name that is not a dotted Python identifier
/// is one the unpickler cannot import (it stops there, having called nothing): the bytes are
/// no pickle that does anything (a CSV header read as `GLOBAL`).
fn import(
    module: &str,
    name: &str,
    at: u64,
    allow: &AllowList,
    imports: &mut BTreeSet<String>,
) -> Result<(), Refusal> {
    if !is_dotted_identifier(module) || !is_dotted_identifier(name) {
        return Err(Refusal::PickleMalformed {
            at,
            why: "imports a name that is not a Python identifier",
        });
    }
    if !allow.allows(module, name) {
        return Err(Refusal::PickleImport(format!("{module}.{name}")));
    }
    imports.insert(format!("{module}.{name}"));
    Ok(())
}

/// A PUT/GET key as CPython reads it (`PyLong_FromString(s, NULL, 10)`: spaces around it,
/// a sign, `_` between digits); a negative one is refused by CPython too.
fn memo_key(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// Whether `text` is `a.b.c`, each part a Python identifier (a letter or `_`, then letters,
/// digits or `_`; Unicode letters count, as in Python 3).
fn is_dotted_identifier(text: &str) -> bool {
    text.split('.').all(|part| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
            && chars.all(|c| c == '_' || c.is_alphanumeric())
    })
}

/// The text of a STRING argument between its quotes (`'…'` or `"…"`).
fn unquoted(text: &str) -> Option<&str> {
    let quote = text.chars().next().filter(|q| *q == '\'' || *q == '"')?;
    text.strip_prefix(quote)?.strip_suffix(quote)
}

/// Whether the argument of FLOAT (`F`), INT (`I`) or LONG (`L`) is a number to Python:
/// `float(text)` or `int(text, 0)` (a trailing `L` allowed for LONG), with the whitespace,
/// signs, underscores and `0x`/`0o`/`0b` prefixes those accept. Slightly wider than Python
/// (that errs toward calling bytes a pickle, which are then scanned).
fn number_parses(op: u8, text: &str) -> bool {
    let t = text.trim();
    let t = if op == b'L' {
        t.strip_suffix('L').unwrap_or(t)
    } else {
        t
    };
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    if op == b'F' {
        return t.replace('_', "").parse::<f64>().is_ok();
    }
    let digits = ["0x", "0X", "0o", "0O", "0b", "0B"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    !digits.is_empty()
        && digits.chars().any(|c| c.is_ascii_hexdigit())
        && digits.chars().all(|c| c.is_ascii_hexdigit() || c == '_')
        && (digits.len() != t.len() || t.chars().all(|c| c.is_ascii_digit() || c == '_'))
}

/// One pickle, to its STOP, read by a fresh unpickler and, given the memo of the pickles
/// before, by a reused one; the memo a next pickle's reused unpickler would carry.
fn scan_one<R: BufRead>(
    input: &mut Counted<R>,
    allow: &AllowList,
    imports: &mut BTreeSet<String>,
    carried: Option<HashMap<u64, Value>>,
) -> Result<Option<HashMap<u64, Value>>, Refusal> {
    let mut m = Machine::new(carried);
    loop {
        let at = input.at;
        let Some(op) = input.byte()? else {
            return Err(Refusal::PickleMalformed {
                at,
                why: "ends before STOP",
            });
        };
        if step(op, at, input, &mut m, allow, imports)? {
            return Ok(m.into_memo());
        }
    }
}

/// Runs one opcode; `true` at STOP.
fn step<R: BufRead>(
    op: u8,
    at: u64,
    input: &mut Counted<R>,
    m: &mut Machine,
    allow: &AllowList,
    imports: &mut BTreeSet<String>,
) -> Result<bool, Refusal> {
    let malformed = |why| Refusal::PickleMalformed { at, why };
    match op {
        b'.' => {
            m.pop(at)?;
            return Ok(true);
        }
        // Values with a fixed-size argument.
        b'K' => {
            input.le(1)?;
            m.push(Value::Other)?;
        }
        b'M' => {
            input.le(2)?;
            m.push(Value::Other)?;
        }
        b'J' => {
            input.le(4)?;
            m.push(Value::Other)?;
        }
        b'G' => {
            input.le(8)?;
            m.push(Value::Other)?;
        }
        // Values with a newline-terminated argument.
        b'F' | b'I' | b'L' => {
            // What Python's float() / int(x, 0) would refuse ends the unpickler there (a CSV
            // line starting with `I` is no pickle); a long number is not kept, and passes.
            if let Some(text) = input.line()? {
                if !number_parses(op, &text) {
                    return Err(malformed("a number Python does not parse"));
                }
            }
            m.push(Value::Other)?;
        }
        b'S' | b'V' => {
            let text = input.line()?;
            // STRING is a quoted repr (Python refuses one that is not quoted); UNICODE is
            // raw-unicode-escaped: plain names need neither.
            let value = match text {
                Some(t) if op == b'S' => match unquoted(&t) {
                    Some(inner) if !inner.contains('\\') => Value::Str(inner.into()),
                    Some(_) => Value::Other,
                    None => return Err(malformed("a STRING argument that is not quoted")),
                },
                Some(t) if !t.contains('\\') => Value::Str(t.into()),
                _ => Value::Other,
            };
            m.push(value)?;
        }
        // Length-prefixed strings and bytes.
        b'T' | b'X' | b'B' => {
            let n = input.le(4)?;
            let v = input.payload(n)?;
            m.push(if op == b'B' { Value::Other } else { v })?;
        }
        b'U' | b'C' | 0x8c => {
            let n = input.le(1)?;
            let v = input.payload(n)?;
            m.push(if op == b'C' { Value::Other } else { v })?;
        }
        0x8d | 0x8e | 0x96 => {
            let n = input.le(8)?;
            let v = input.payload(n)?;
            m.push(if op == 0x8d { v } else { Value::Other })?;
        }
        0x8a => {
            let n = input.le(1)?;
            input.payload(n)?;
            m.push(Value::Other)?;
        }
        0x8b => {
            let n = input.le(4)?;
            input.payload(n)?;
            m.push(Value::Other)?;
        }
        // Constants and empty containers.
        b'N' | 0x88 | 0x89 | b'}' | b']' | b')' | 0x8f | 0x97 => m.push(Value::Other)?,
        // Stack and marks.
        b'(' => m.mark()?,
        b'0' => m.pop_or_mark(at)?,
        b'1' => {
            m.pop_mark(at)?;
        }
        b'2' => {
            m.dup(at)?;
        }
        // Containers built from the stack.
        b'a' | b'b' => m.pop(at)?,
        b's' => m.pop_n(2, at)?,
        b'e' | b'u' | 0x90 => {
            m.pop_mark(at)?;
        }
        b'd' | b'l' | b't' | 0x91 => {
            m.pop_mark(at)?;
            m.push(Value::Other)?;
        }
        0x85 => {
            m.pop_n(1, at)?;
            m.push(Value::Other)?;
        }
        0x86 => {
            m.pop_n(2, at)?;
            m.push(Value::Other)?;
        }
        0x87 => {
            m.pop_n(3, at)?;
            m.push(Value::Other)?;
        }
        // Imports: the checks that matter.
        b'c' | b'i' => {
            let module = input.line()?;
            let name = input.line()?;
            let (Some(module), Some(name)) = (module, name) else {
                return Err(Refusal::PickleOpaqueImport(
                    "GLOBAL or INST with a non-UTF-8 or over-long name",
                ));
            };
            import(&module, &name, at, allow, imports)?;
            if op == b'i' {
                m.pop_mark(at)?;
            }
            m.push(Value::Other)?;
        }
        0x93 => m.stack_global(at, |module, name| import(module, name, at, allow, imports))?,
        0x82..=0x84 => {
            return Err(Refusal::PickleOpaqueImport(
                "the copyreg extension registry (EXT1/EXT2/EXT4)",
            ))
        }
        // Calls: what they call was imported (and checked) above.
        b'R' | 0x81 => {
            m.pop_n(2, at)?;
            m.push(Value::Other)?;
        }
        0x92 => {
            m.pop_n(3, at)?;
            m.push(Value::Other)?;
        }
        b'o' => {
            m.pop_mark(at)?;
            m.push(Value::Other)?;
        }
        // Persistent ids: the loader's persistent_load resolves them (PyTorch: storages).
        b'P' => {
            input.line()?;
            m.push(Value::Other)?;
        }
        b'Q' => {
            m.pop(at)?;
            m.push(Value::Other)?;
        }
        // Memo.
        b'p' => {
            let key = input
                .line()?
                .and_then(|t| memo_key(&t))
                .ok_or_else(|| malformed("bad PUT key"))?;
            m.memo_put(key, at)?;
        }
        b'q' => {
            let key = input.le(1)?;
            m.memo_put(key, at)?;
        }
        b'r' => {
            let key = input.le(4)?;
            m.memo_put(key, at)?;
        }
        0x94 => m.memoize(at)?,
        b'g' => {
            let key = input
                .line()?
                .and_then(|t| memo_key(&t))
                .ok_or_else(|| malformed("bad GET key"))?;
            m.memo_get(key, at)?;
        }
        b'h' => {
            let key = input.le(1)?;
            m.memo_get(key, at)?;
        }
        b'j' => {
            let key = input.le(4)?;
            m.memo_get(key, at)?;
        }
        // Framing.
        0x80 => {
            let proto = input.need()?;
            if proto > 5 {
                return Err(malformed("unknown protocol"));
            }
        }
        0x95 => {
            input.le(8)?;
        }
        0x98 => {}
        _ => return Err(malformed("unknown opcode")),
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_bytes(bytes: &[u8]) -> Result<Scanned, Refusal> {
        scan(bytes, &AllowList::default())
    }

    /// SHORT_BINUNICODE of `s`.
    fn su(s: &str) -> Vec<u8> {
        let mut v = vec![0x8c, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn a_plain_protocol_2_pickle_of_an_ordered_dict_passes() {
        // pickle.dumps(collections.OrderedDict(a=1), protocol=2)
        let bytes =
            b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00aq\x02K\x01s.";
        let scanned = scan_bytes(bytes).unwrap();
        assert_eq!(scanned.pickles, 1);
        assert!(scanned.imports.contains("collections.OrderedDict"));
    }

    #[test]
    fn os_system_by_global_or_stack_global_is_refused() {
        // pickle.dumps of a class whose __reduce__ returns (os.system, ("id",)), protocol 2.
        let global = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.";
        assert_eq!(
            scan_bytes(global).unwrap_err().to_string(),
            "pickle imports posix.system (not on the allow-list)"
        );
        let mut stack = vec![0x80, 4];
        stack.extend(su("os"));
        stack.extend(su("system"));
        stack.extend([0x93]);
        stack.extend(su("id"));
        stack.extend([0x85, b'R', b'.']);
        assert_eq!(
            scan_bytes(&stack).unwrap_err().to_string(),
            "pickle imports os.system (not on the allow-list)"
        );
    }

    #[test]
    fn stack_tricks_do_not_hide_the_real_operands() {
        // Push os/system, then an allowed pair that is popped again before STACK_GLOBAL: the
        // operands are os and system, whatever was pushed last.
        let mut p = vec![0x80, 4];
        p.extend(su("os"));
        p.extend(su("system"));
        p.extend(su("collections"));
        p.extend(su("OrderedDict"));
        p.extend([b'0', b'0', 0x93, b')', b'R', b'.']);
        assert!(matches!(scan_bytes(&p), Err(Refusal::PickleImport(s)) if s == "os.system"));
        // Through a mark and POP_MARK, and through the memo.
        let mut p = vec![0x80, 4];
        p.extend(su("builtins"));
        p.extend([0x94]);
        p.extend(su("eval"));
        p.extend([0x94, b'(']);
        p.extend(su("collections"));
        p.extend([b'1', b'h', 0, b'h', 1, 0x93, b')', b'R', b'.']);
        assert!(matches!(scan_bytes(&p), Err(Refusal::PickleImport(s)) if s == "builtins.eval"));
        // An operand that is not a string is refused, not guessed.
        let mut p = vec![0x80, 4, b'K', 1];
        p.extend(su("system"));
        p.extend([0x93, b'.']);
        assert!(matches!(
            scan_bytes(&p),
            Err(Refusal::PickleOpaqueImport(_))
        ));
    }

    #[test]
    fn the_extension_registry_unknown_opcodes_and_truncation_are_refused() {
        assert!(matches!(
            scan_bytes(b"\x80\x02\x82\x01)R."),
            Err(Refusal::PickleOpaqueImport(_))
        ));
        assert!(matches!(
            scan_bytes(b"\x80\x02\xff."),
            Err(Refusal::PickleMalformed { at: 2, .. })
        ));
        assert!(matches!(
            scan_bytes(b"\x80\x02X\xff\xff\x00\x00ab"),
            Err(Refusal::PickleMalformed { .. })
        ));
        assert!(matches!(
            scan_bytes(b"\x80\x02K\x01"),
            Err(Refusal::PickleMalformed { .. })
        ));
    }

    #[test]
    fn pickles_back_to_back_are_all_scanned_and_trailing_data_is_not() {
        let mut two = b"\x80\x02K\x01.".to_vec();
        two.extend_from_slice(b"\x80\x02cposix\nsystem\n.");
        assert!(matches!(scan_bytes(&two), Err(Refusal::PickleImport(_))));
        let mut data = b"\x80\x02K\x01.".to_vec();
        data.extend_from_slice(&[0x11; 1000]);
        let scanned = scan_bytes(&data).unwrap();
        assert_eq!((scanned.pickles, scanned.pickle_bytes), (1, 5));
    }

    #[test]
    fn protocol_0_and_1_pickles_are_recognised_and_text_is_not() {
        // pickle.dumps(Evil(), protocol=0) and a protocol-1 dict.
        assert!(looks_like_pickle(
            b"cposix\nsystem\np0\n(Vid\np1\ntp2\nRp3\n."
        ));
        assert!(looks_like_pickle(b"}q\x00(X\x01\x00\x00\x00aq\x01K\x01u."));
        for text in [
            &b"The quick brown fox\n"[..],
            b"Notes about the run\n",
            b"a,b,c\n1,2,3\n",
            b"{\"k\": 1}",
            b"# Title\n",
            b"PAR1\x15\x04",
            b"0.5,0.25\n",
            b"",
            // CSV and word lists whose first letters are text opcodes (GLOBAL, INST, INT,
            // STRING) whose arguments Python would not accept.
            b"city,population\nParis,2100000\n",
            b"id,name\n1,foo\n",
            b"I1,I2\n3,4\n",
            b"S'quoted',x\n",
            b"c\nos\nsystem\n",
            b"cat\tdog\nc1\tc2\n",
            b"F1.5.5\n",
        ] {
            assert!(
                !looks_like_pickle(text),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        // Two identifier lines after `c` are an import Python would perform: a pickle.
        assert!(looks_like_pickle(b"cat\ndog\nfish\n"));
        assert!(looks_like_pickle(b"I0x1F\nI-3\nF-1.5e3\nS\"q\"\n."));
        // Scanned as a pickle, the protocol-0 one is refused.
        let p0 = b"cposix\nsystem\np0\n(Vid\np1\ntp2\nRp3\n.";
        assert!(matches!(scan_bytes(p0), Err(Refusal::PickleImport(s)) if s == "posix.system"));
    }

    #[test]
    fn what_follows_the_first_pickle_is_scanned_until_it_stops_parsing() {
        let benign = b"\x80\x02}q\x00.";
        // A protocol-0 pickle after a benign one: no PROTO to announce it, still scanned.
        let mut two = benign.to_vec();
        two.extend_from_slice(b"cos\ngetcwd\n(tR.");
        assert!(matches!(scan_bytes(&two), Err(Refusal::PickleImport(s)) if s == "os.getcwd"));
        // Cut short after its call: the call ran before the damage, so refused all the same.
        let mut cut = benign.to_vec();
        cut.extend_from_slice(b"\x80\x02cos\ngetcwd\n)R\xff\xff");
        assert!(matches!(scan_bytes(&cut), Err(Refusal::PickleImport(_))));
        // Raw storage bytes that begin like a pickle and stop parsing are data.
        let mut legacy = benign.to_vec();
        legacy.extend_from_slice(b"\x80\x02\x00\x00\x80\x02\x00\x00");
        let scanned = scan_bytes(&legacy).unwrap();
        assert_eq!(
            (scanned.pickles, scanned.pickle_bytes),
            (1, benign.len() as u64)
        );
        // But the first must be a whole pickle.
        assert!(matches!(
            scan_bytes(b"\x80\x02}q\x00"),
            Err(Refusal::PickleMalformed { .. })
        ));
    }

    #[test]
    fn the_sniffers_opcode_table_is_the_scanners() {
        for op in 0..=255u8 {
            let mut bytes = vec![0x80, 2, op];
            bytes.extend_from_slice(&[0u8; 16]);
            let unknown = matches!(
                scan_bytes(&bytes),
                Err(Refusal::PickleMalformed {
                    at: 2,
                    why: "unknown opcode"
                })
            );
            assert_eq!(
                crate::sniff::is_pickle_opcode(op),
                !unknown,
                "opcode {op:#04x}"
            );
        }
    }

    #[test]
    fn a_configured_allow_list_extends_the_default() {
        let p = b"\x80\x02cmylib\nLayer\n)R.";
        assert!(scan_bytes(p).is_err());
        assert!(scan(&p[..], &AllowList::with(["mylib.Layer"])).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = scan_bytes(&bytes);
        }
    }
}
