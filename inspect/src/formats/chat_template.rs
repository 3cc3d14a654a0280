//! Chat templates: the Jinja program a model carries (`tokenizer.chat_template` in GGUF,
//! `chat_template` in `tokenizer_config.json`) and an inference server runs on every request.
//! Run by a plain `jinja2.Environment` (llama-cpp-python before 0.2.72: CVE-2024-34359), a
//! template reaches Python objects' attributes and from there anything
//! (`''.__class__.__mro__[1].__subclasses__()`). The gate does not run it: it reads its
//! tokens and admits only what real chat templates use.
//!
//! A template may use:
//! - text, `{{ … }}`, comments, and the statements `if`/`elif`/`else`, `for` (with `loop`),
//!   `set` (also `ns.x` on a `namespace`), `macro`/`call`, `filter`, `raw`, `break`,
//!   `continue` and `generation`; no `import`, `include`, `extends`, `from`, `block`, `with`
//!   or `do`;
//! - names and attributes that do not start with `_`; not the globals `self`, `cycler`,
//!   `joiner`, `lipsum`, `config`, `request`; no `format`/`format_map` (method or filter:
//!   `'{0.__class__}'.format(x)` reads attributes) and no `attr` filter;
//! - string literals without `__`, not starting with `_`, with no escape but `\n`, `\t`,
//!   `\r`, `\\` and quotes (`'\x5f'` is `_`);
//! - subscripts (`x[…]`, which Jinja falls back to reading as an attribute) whose key is one
//!   string literal, a number, a slice, or arithmetic on numbers, `loop` counters, `|length`
//!   and names that cannot hold a string the template built (`'_' ~ '_class_' ~ '_'` needs
//!   no literal the rules above refuse): not a name `set` from a string literal worked on
//!   (`~`, `+`, `*`, `%`, a filter, a call, a subscript), nor a `for` variable over one, a
//!   macro parameter where a call passes one (the whole template is read first: a macro
//!   body runs where it is called), `loop.previtem`/`nextitem`, `kwargs` or `varargs`.
//!   Strings from the request itself (a message's content, a tool schema's field names) are
//!   the caller's, not the model's, and may key a subscript;
//! - in `map`, `select`/`reject`, `selectattr`/`rejectattr`, `sort`, `groupby`, `sum`, `min`,
//!   `max`, `unique` and `dictsort` (which read attributes by name), only literal arguments
//!   and keywords, and no `'attr'` or `'format'` among them.

use std::collections::HashSet;

/// Longest template checked (real ones are a few KiB to a few tens of KiB).
pub const MAX_TEMPLATE: usize = 256 << 10;
/// Most tokens in one tag: the checks scan forward from brackets, so a tag's cost grows
/// with the square of its length.
const MAX_TAG_TOKENS: usize = 4096;
/// Passes over the template to settle which names hold built strings (real templates
/// settle in two or three).
const MAX_TAINT_PASSES: usize = 64;

/// Why a template is refused, or `Ok`.
pub fn check(template: &str) -> Result<(), String> {
    if template.len() > MAX_TEMPLATE {
        return Err(format!(
            "a template of {} bytes (at most {MAX_TEMPLATE})",
            template.len()
        ));
    }
    let mut parsed = Vec::new();
    for tag in tags(template)? {
        if tag.kind != TagKind::Comment {
            let tokens = tokenize(tag.body)?;
            if tokens.len() > MAX_TAG_TOKENS {
                return Err(format!("a tag of more than {MAX_TAG_TOKENS} tokens"));
            }
            parsed.push((tag.kind, tokens));
        }
    }
    // Which names may hold a built string, wherever they are read: a macro's body runs
    // where it is called, after sets further down, so the whole template is read until no
    // new name is found, then checked.
    let macros = macro_params(&parsed);
    let mut tainted: HashSet<String> = ALWAYS_TAINTED.iter().map(|n| (*n).to_string()).collect();
    let mut settled = false;
    for _ in 0..MAX_TAINT_PASSES {
        let before = tainted.len();
        for (kind, tokens) in &parsed {
            taint(*kind, tokens, &macros, &mut tainted);
        }
        if tainted.len() == before {
            settled = true;
            break;
        }
    }
    if !settled {
        return Err("names set from one another too many times over to follow".into());
    }
    for (kind, tokens) in &parsed {
        match kind {
            TagKind::Expression => check_expression(tokens, &tainted)?,
            TagKind::Statement => statement(tokens, &tainted)?,
            TagKind::Comment => {}
        }
    }
    Ok(())
}

/// Names that hold values the template does not show: a loop's neighbours, a macro's extra
/// arguments.
const ALWAYS_TAINTED: &[&str] = &["previtem", "nextitem", "kwargs", "varargs"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagKind {
    Expression,
    Statement,
    Comment,
}

#[derive(Debug)]
struct Tag<'a> {
    kind: TagKind,
    body: &'a str,
}

/// The tags of a template, outside `raw` blocks.
fn tags(template: &str) -> Result<Vec<Tag<'_>>, String> {
    let mut tags = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let (kind, close) = match after.chars().next() {
            Some('{') => (TagKind::Expression, "}}"),
            Some('%') => (TagKind::Statement, "%}"),
            Some('#') => (TagKind::Comment, "#}"),
            _ => {
                rest = after;
                continue;
            }
        };
        let inner = &after[1..];
        let end = if kind == TagKind::Comment {
            inner.find(close)
        } else {
            find_close(inner, close)
        }
        .ok_or("a tag that is not closed")?;
        let body = inner[..end].trim_matches(|c: char| c == '-' || c == '+' || c == '~');
        rest = &inner[end + 2..];
        if kind == TagKind::Statement && body.trim() == "raw" {
            // Raw text up to endraw: not template code.
            let stop = rest
                .find("endraw")
                .ok_or("a raw block that is not closed")?;
            rest = &rest[stop..];
            rest = &rest[rest.find("%}").ok_or("a raw block that is not closed")? + 2..];
            continue;
        }
        tags.push(Tag { kind, body });
    }
    Ok(tags)
}

/// Where `close` ends a tag body, skipping string literals.
/// Jinja's lexer: the end of a tag counts only outside brackets (`{{ {'a': {'b': 1}} }}`).
fn find_close(body: &str, close: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut quote = None;
    let mut depth = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if depth == 0 && bytes[i..].starts_with(close.as_bytes()) => return Some(i),
            None if matches!(b, b'(' | b'[' | b'{') => depth += 1,
            None if matches!(b, b')' | b']' | b'}') => depth = depth.saturating_sub(1),
            None => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Number,
    Op(String),
}

/// The tokens of an expression or statement body.
fn tokenize(body: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = body.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Name(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            // A fraction: `1.5` (but `x.0` is an attribute: a name came before).
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            }
            tokens.push(Token::Number);
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err("a string that is not closed".into());
                };
                i += 1;
                if d == c {
                    break;
                }
                if d == '\\' {
                    let e = *chars.get(i).ok_or("a string that is not closed")?;
                    i += 1;
                    text.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' | '\'' | '"' => e,
                        _ => return Err(format!("a string with the escape \\{e}")),
                    });
                } else {
                    text.push(d);
                }
            }
            tokens.push(Token::Str(text));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = if ["**", "//", "==", "!=", "<=", ">="].contains(&two.as_str()) {
                two
            } else {
                c.to_string()
            };
            i += op.chars().count();
            tokens.push(Token::Op(op));
        }
    }
    Ok(tokens)
}

/// Names no template needs, each a way to Python's internals.
const DENIED_NAMES: &[&str] = &["self", "cycler", "joiner", "lipsum", "config", "request"];
/// Attributes and filters that read attributes by a name given as data.
const DENIED_ATTRIBUTES: &[&str] = &[
    "format",
    "format_map",
    "mro",
    // What Jinja's own sandbox also keeps from templates: frames and code of functions,
    // generators and coroutines.
    "gi_frame",
    "gi_code",
    "cr_frame",
    "cr_code",
    "ag_frame",
    "ag_code",
    "tb_frame",
    "f_globals",
    "f_locals",
    "f_builtins",
    "func_globals",
    "func_code",
    "im_func",
];
const DENIED_FILTERS: &[&str] = &["attr", "format", "xmlattr"];
/// Filters that take an attribute (or a filter) by name.
const BY_NAME_FILTERS: &[&str] = &[
    "map",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "sort",
    "groupby",
    "sum",
    "min",
    "max",
    "unique",
    "dictsort",
];
const STATEMENTS: &[&str] = &[
    "if",
    "elif",
    "else",
    "endif",
    "for",
    "endfor",
    "set",
    "endset",
    "macro",
    "endmacro",
    "call",
    "endcall",
    "filter",
    "endfilter",
    "break",
    "continue",
    "generation",
    "endgeneration",
];

fn check_string(text: &str) -> Result<(), String> {
    if text.contains("__") || text.starts_with('_') {
        return Err(format!(
            "the string {text:?} (names starting with _ are refused)"
        ));
    }
    Ok(())
}

/// Checks an expression's tokens.
fn check_expression(tokens: &[Token], tainted: &HashSet<String>) -> Result<(), String> {
    for (i, token) in tokens.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &tokens[p]);
        let is_op = |t: Option<&Token>, op: &str| matches!(t, Some(Token::Op(o)) if o == op);
        match token {
            Token::Str(text) => check_string(text)?,
            Token::Name(name) => {
                if name.starts_with('_') {
                    return Err(format!(
                        "the name {name} (names starting with _ are refused)"
                    ));
                }
                if is_op(previous, ".") {
                    if DENIED_ATTRIBUTES.contains(&name.as_str()) {
                        return Err(format!("the attribute .{name}"));
                    }
                } else if is_op(previous, "|") {
                    if DENIED_FILTERS.contains(&name.as_str()) {
                        return Err(format!("the filter {name}"));
                    }
                    if BY_NAME_FILTERS.contains(&name.as_str()) && is_op(tokens.get(i + 1), "(") {
                        by_name_arguments(&tokens[i + 2..], name)?;
                    }
                } else if DENIED_NAMES.contains(&name.as_str()) {
                    return Err(format!("the name {name}"));
                }
            }
            Token::Op(op) if op == "[" && !is_subscript_start(previous) => {}
            Token::Op(op) if op == "[" => subscript(&tokens[i + 1..], tainted)?,
            _ => {}
        }
    }
    Ok(())
}

/// Whether `[` after `previous` subscripts a value (else it opens a list).
fn is_subscript_start(previous: Option<&Token>) -> bool {
    match previous {
        Some(Token::Name(n)) => {
            !["in", "and", "or", "not", "if", "else", "is"].contains(&n.as_str())
        }
        Some(Token::Str(_)) => true,
        Some(Token::Op(o)) => o == ")" || o == "]",
        _ => false,
    }
}

/// Tokens up to the bracket closing one opened just before them.
fn until_close<'t>(tokens: &'t [Token], open: &str, close: &str) -> Result<&'t [Token], String> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Op(o) if o == open => depth += 1,
            Token::Op(o) if o == close => {
                if depth == 0 {
                    return Ok(&tokens[..i]);
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    Err(format!("a {open} that is not closed"))
}

/// A subscript key: one string literal, or numbers, slices, counters and untainted names.
fn subscript(tokens: &[Token], tainted: &HashSet<String>) -> Result<(), String> {
    let key = until_close(tokens, "[", "]")?;
    if let [Token::Str(_)] = key {
        return Ok(()); // checked as a string
    }
    for (i, t) in key.iter().enumerate() {
        let after_bar = i > 0 && key[i - 1] == Token::Op("|".into());
        match t {
            Token::Number => {}
            Token::Name(n) if after_bar && ["length", "count", "int"].contains(&n.as_str()) => {}
            Token::Name(n) if after_bar => return Err(format!("the filter {n} in a subscript")),
            Token::Name(n) if tainted.contains(n) => {
                return Err(format!("a subscript by {n}, which may hold any string"));
            }
            Token::Name(_) => {}
            Token::Op(o)
                if ["+", "-", "*", "//", "%", ":", ".", "|", "(", ")"].contains(&o.as_str()) =>
            {
                if o == "(" && i > 0 && matches!(key[i - 1], Token::Name(_)) {
                    return Err("a call in a subscript".into());
                }
            }
            _ => return Err("a subscript built from strings".into()),
        }
    }
    Ok(())
}

/// Arguments of a filter that reads attributes by name: literals and keywords only.
fn by_name_arguments(tokens: &[Token], filter: &str) -> Result<(), String> {
    let args = until_close(tokens, "(", ")")?;
    for (i, t) in args.iter().enumerate() {
        match t {
            Token::Str(s) if s == "attr" || s == "format" => {
                return Err(format!("{filter} applying the filter {s}"));
            }
            Token::Str(s) => check_string(s)?,
            Token::Number => {}
            Token::Name(n)
                if ["true", "false", "none", "True", "False", "None"].contains(&n.as_str()) => {}
            Token::Name(_) if args.get(i + 1) == Some(&Token::Op("=".into())) => {}
            Token::Op(o) if o == "," || o == "=" || o == "-" => {}
            _ => return Err(format!("{filter} with an argument that is not a literal")),
        }
    }
    Ok(())
}

/// Whether an expression can produce a string the template built: a tainted name, or a
/// string literal worked on (`~`, `+`, `*`, `%`, a filter, a call, a subscript). A literal, a
/// list of literals, and data read without string literals are not.
fn builds_strings(tokens: &[Token], tainted: &HashSet<String>) -> bool {
    let has_string = tokens.iter().any(|t| matches!(t, Token::Str(_)));
    tokens.iter().enumerate().any(|(i, t)| {
        let previous = i.checked_sub(1).map(|p| &tokens[p]);
        match t {
            Token::Name(n) => tainted.contains(n),
            Token::Op(_) if !has_string => false,
            Token::Op(o) => match o.as_str() {
                "~" | "+" | "*" | "%" | "|" => true,
                "(" => matches!(previous, Some(Token::Name(_))) || is_op(previous, ")"),
                "[" => is_subscript_start(previous),
                _ => false,
            },
            _ => false,
        }
    })
}

fn is_op(token: Option<&Token>, op: &str) -> bool {
    matches!(token, Some(Token::Op(o)) if o == op)
}

/// Each macro's parameter names.
fn macro_params(parsed: &[(TagKind, Vec<Token>)]) -> Vec<(String, Vec<String>)> {
    let mut macros = Vec::new();
    for (kind, tokens) in parsed {
        if let (
            TagKind::Statement,
            [Token::Name(kw), Token::Name(name), Token::Op(open), rest @ ..],
        ) = (kind, tokens.as_slice())
        {
            if kw == "macro" && open == "(" {
                let params = rest
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| match t {
                        Token::Name(p) if i == 0 || is_op(rest.get(i - 1), ",") => Some(p.clone()),
                        _ => None,
                    })
                    .collect();
                macros.push((name.clone(), params));
            }
        }
    }
    macros
}

/// Names a tag may set to a built string: `set` targets, `for` targets over built strings,
/// a macro's parameters where a call passes one (or a default is one).
fn taint(
    kind: TagKind,
    tokens: &[Token],
    macros: &[(String, Vec<String>)],
    tainted: &mut HashSet<String>,
) {
    if kind == TagKind::Statement {
        let rest = tokens.get(1..).unwrap_or(&[]);
        match tokens.first() {
            Some(Token::Name(kw)) if kw == "set" => {
                // `set a = …`, `set a, b = …`, `set ns.a = …`, or a block `set a` … `endset`.
                let eq = rest.iter().position(|t| *t == Token::Op("=".into()));
                let (targets, value) = match eq {
                    Some(eq) => (&rest[..eq], &rest[eq + 1..]),
                    None => (rest, &rest[rest.len()..]),
                };
                if eq.is_none() || builds_strings(value, tainted) {
                    taint_names(targets, tainted);
                }
            }
            Some(Token::Name(kw)) if kw == "for" => {
                if let Some(pos) = rest.iter().position(|t| *t == Token::Name("in".into())) {
                    if builds_strings(&rest[pos + 1..], tainted) {
                        taint_names(&rest[..pos], tainted);
                    }
                }
            }
            Some(Token::Name(kw)) if kw == "macro" => {
                // A default that builds a string.
                if let [Token::Name(name), Token::Op(open), args @ ..] = rest {
                    if open == "(" && builds_strings(args, tainted) {
                        taint_params(name, macros, tainted);
                    }
                }
            }
            _ => {}
        }
    }
    // Calls of macros with a built argument.
    for (i, t) in tokens.iter().enumerate() {
        let Token::Name(name) = t else { continue };
        if !is_op(tokens.get(i + 1), "(") || !macros.iter().any(|(m, _)| m == name) {
            continue;
        }
        let is_definition = i == 1 && tokens.first() == Some(&Token::Name("macro".into()));
        if is_definition {
            continue;
        }
        if let Ok(args) = until_close(&tokens[i + 2..], "(", ")") {
            if builds_strings(args, tainted) {
                taint_params(name, macros, tainted);
            }
        }
    }
}

fn taint_params(name: &str, macros: &[(String, Vec<String>)], tainted: &mut HashSet<String>) {
    for (m, params) in macros {
        if m == name {
            tainted.extend(params.iter().cloned());
        }
    }
}

/// Checks a statement: an allowed keyword, and its expressions (a `filter` block's filters
/// as filters).
fn statement(tokens: &[Token], tainted: &HashSet<String>) -> Result<(), String> {
    let Some(Token::Name(keyword)) = tokens.first() else {
        return Err("a statement without a keyword".into());
    };
    if !STATEMENTS.contains(&keyword.as_str()) {
        return Err(format!("the statement {keyword}"));
    }
    if keyword == "filter" {
        let mut as_filters = vec![Token::Op("|".into())];
        as_filters.extend_from_slice(&tokens[1..]);
        return check_expression(&as_filters, tainted);
    }
    check_expression(&tokens[1..], tainted)
}

fn taint_names(tokens: &[Token], tainted: &mut HashSet<String>) {
    for t in tokens {
        if let Token::Name(n) = t {
            tainted.insert(n.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_templates_pass() {
        for t in [
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
            "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}{% endfor %}",
            "{%- set ns = namespace(found=false) -%}{%- for message in messages -%}{%- if message.role == 'system' -%}{%- set ns.found = true -%}{%- endif -%}{%- endfor -%}{{ messages[loop.index0 - 1]['content'] if false }}{{ messages[-1].content.split('</think>')[-1].strip() }}{{ (messages|selectattr('role', 'equalto', 'user')|list)[0] }}{{ messages[1:] | length }}",
            "{# a comment with __class__ #}{% raw %}{{ ''.__class__ }}{% endraw %}{{ tools | tojson(indent=4) }}",
            // Llama 3.1's comment has an apostrophe; Hermes keys a map by a macro argument
            // read from the tool schema; functionary loops over a literal list of names.
            "{#- This means we're in ipython mode #}{{ x }}",
            "{%- macro json_to_python_type(json_spec) %}{%- set basic_type_map = {'string': 'str', 'number': 'float'} %}{{- basic_type_map[json_spec.type] }}{%- endmacro %}{{ json_to_python_type(tool.parameters) }}",
            "{%- for field, field_name in [('maximum', 'Maximum'), ('minimum', 'Minimum')] -%}{{ param[field] }}{%- endfor %}",
            "{{ {'a': {'b': 1}}['a']['b'] }}",
        ] {
            assert_eq!(check(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn templates_that_would_cost_too_much_to_check_are_refused() {
        let long = "x".repeat(MAX_TEMPLATE + 1);
        assert!(check(&long).unwrap_err().contains("a template of"));
        let brackets = format!("{{{{ {}{} }}}}", "[".repeat(3000), "]".repeat(3000));
        assert!(check(&brackets).unwrap_err().contains("tokens"));
        // A chain of sets, each reading the next one down: one more name per pass.
        let mut chain = String::from("{{ x[a0] }}");
        for i in 0..100 {
            chain.push_str(&format!("{{% set a{i} = a{} %}}", i + 1));
        }
        chain.push_str("{% set a100 = 'a' ~ 'b' %}");
        assert!(check(&chain).unwrap_err().contains("too many times"));
    }

    #[test]
    fn template_injections_are_refused() {
        for t in [
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ self._TemplateReference__context }}",
            "{{ cycler.next }}",
            "{{ messages|attr('x') }}",
            "{{ ''['__cla' ~ 'ss__'] }}",
            "{% set k = 'a' ~ 'b' %}{{ messages[k] }}",
            "{% for k in ['a' ~ 'b', 'c'] %}{{ messages[k] }}{% endfor %}",
            "{{ messages|map(attribute=k)|list }}",
            "{{ messages|map('attr', 'x')|list }}",
            "{{ '{0.x}'.format(messages) }}",
            "{{ '\\x5f\\x5fclass\\x5f\\x5f' }}",
            "{% import 'x' as y %}",
            "{% include 'x' %}",
            "{{ messages[('a'|string)] }}",
            "{{ x",
            // Found by a red-team pass: `}}` inside brackets does not end the tag.
            "{{ ({'a': {'b': 1}}, ''.__class__)[1:] }}",
            "{% set u = 'a_'[1] %}{% set k = u~u~'class'~u~u %}{% filter attr(k)|string %}x{% endfilter %}",
            "{% set u = 'a_'[1] %}{% for i in [u~u~'class'~u~u, 0] %}{{ ''[loop.previtem] }}{% endfor %}",
            "{% macro m() %}{{ ''[k] }}{% endmacro %}{% set u = 'a_'[1] %}{% set k = u~u~'class'~u~u %}{{ m() }}",
            "{% macro m() %}{{ ''[kwargs.z] }}{% endmacro %}{{ m(z='a'~'b') }}",
            "{% macro m(p) %}{{ ''[p] }}{% endmacro %}{{ m('a_'[1]~'b') }}",
        ] {
            assert!(check(t).is_err(), "{t}");
        }
    }
}
