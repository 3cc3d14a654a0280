//! Python literals as `ast.literal_eval` reads them — the parser NumPy uses for a `.npy`
//! header — so the gate reads the header NumPy reads, not a substring of it: quotes of
//! either kind, escapes (`'\x4f'` is `'O'`), adjacent strings joined (`'|' 'O'`), a key
//! given twice (the last wins), any spacing.
//!
//! Bounded: nesting at most [`MAX_DEPTH`] deep (the text itself is bounded by the caller).

/// A parsed literal. Strings whose escapes are not decoded here (`\N{…}`) are `Opaque`:
/// the caller treats them as anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Opaque,
    Bytes,
    Int(i128),
    Float,
    Bool(bool),
    None,
    Tuple(Vec<Literal>),
    List(Vec<Literal>),
    /// Entries in order, duplicates kept ([`Literal::get`] takes the last, as Python does).
    Dict(Vec<(Literal, Literal)>),
}

/// Deepest nesting parsed.
pub const MAX_DEPTH: usize = 32;

impl Literal {
    /// The value of `key` in a dict: the last entry with that key, as in a Python dict.
    pub fn get(&self, key: &str) -> Option<&Literal> {
        match self {
            Literal::Dict(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Literal::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The distinct string keys of a dict (`None` if a key is not a plain string).
    pub fn keys(&self) -> Option<Vec<&str>> {
        let Literal::Dict(entries) = self else {
            return None;
        };
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in entries {
            let Literal::Str(k) = k else { return None };
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        Some(keys)
    }
}

/// Parses `text` as one literal (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Literal, &'static str> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    let value = p.value(0)?;
    p.space();
    if p.at != p.chars.len() {
        return Err("text after the literal");
    }
    Ok(value)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.space();
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Literal, &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.space();
        match self.peek() {
            Some('{') => {
                self.at += 1;
                let mut entries = Vec::new();
                while !self.eat('}') {
                    let k = self.value(depth + 1)?;
                    if !self.eat(':') {
                        return Err("a dict entry without ':'");
                    }
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                    if !self.eat(',') {
                        if !self.eat('}') {
                            return Err("a dict not closed");
                        }
                        break;
                    }
                }
                Ok(Literal::Dict(entries))
            }
            Some(open @ ('(' | '[')) => {
                self.at += 1;
                let close = if open == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                let mut comma = false;
                while !self.eat(close) {
                    items.push(self.value(depth + 1)?);
                    comma = self.eat(',');
                    if !comma {
                        if !self.eat(close) {
                            return Err("a sequence not closed");
                        }
                        break;
                    }
                }
                Ok(match open {
                    // `(x)` is x; `(x,)` a tuple of one.
                    '(' if items.len() == 1 && !comma => items.remove(0),
                    '(' => Literal::Tuple(items),
                    _ => Literal::List(items),
                })
            }
            Some(c) if c == '\'' || c == '"' || c.is_ascii_alphabetic() || c == '_' => {
                self.word_or_string()
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number(),
            _ => Err("not a literal"),
        }
    }

    /// A name (`True`, `False`, `None`) or strings, adjacent ones joined.
    fn word_or_string(&mut self) -> Result<Literal, &'static str> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.at += 1;
        }
        let word: String = self.chars[start..self.at].iter().collect();
        if !matches!(self.peek(), Some('\'' | '"')) {
            return match word.as_str() {
                "True" => Ok(Literal::Bool(true)),
                "False" => Ok(Literal::Bool(false)),
                "None" => Ok(Literal::None),
                _ => Err("a name that is not a literal"),
            };
        }
        self.at = start;
        let mut joined = Some(String::new());
        let mut bytes = None;
        loop {
            self.space();
            let prefix_start = self.at;
            while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                self.at += 1;
            }
            let prefix: String = self.chars[prefix_start..self.at]
                .iter()
                .collect::<String>()
                .to_ascii_lowercase();
            if !matches!(self.peek(), Some('\'' | '"')) {
                self.at = prefix_start;
                break;
            }
            let (raw, is_bytes) = match prefix.as_str() {
                "" | "u" => (false, false),
                "r" => (true, false),
                "b" => (false, true),
                "br" | "rb" => (true, true),
                _ => return Err("a string prefix literal_eval refuses"),
            };
            if bytes.is_some_and(|b| b != is_bytes) {
                return Err("bytes and str joined");
            }
            bytes = Some(is_bytes);
            let part = self.string(raw)?;
            joined = joined.zip(part).map(|(mut j, p)| {
                j.push_str(&p);
                j
            });
        }
        Ok(match (bytes, joined) {
            (Some(true), _) => Literal::Bytes,
            (_, Some(s)) => Literal::Str(s),
            (_, None) => Literal::Opaque,
        })
    }

    /// One quoted string (single, double or triple quotes); `None` if an escape is not
    /// decoded here.
    fn string(&mut self, raw: bool) -> Result<Option<String>, &'static str> {
        let quote = self.peek().ok_or("not a string")?;
        let triple = self.chars.get(self.at..self.at + 3) == Some(&[quote; 3][..]);
        self.at += if triple { 3 } else { 1 };
        let mut out = Some(String::new());
        loop {
            let c = self.peek().ok_or("a string not closed")?;
            if c == quote
                && (!triple || self.chars.get(self.at..self.at + 3) == Some(&[quote; 3][..]))
            {
                self.at += if triple { 3 } else { 1 };
                return Ok(out);
            }
            if c == '\n' && !triple {
                return Err("a newline in a string");
            }
            self.at += 1;
            if c != '\\' {
                if let Some(o) = out.as_mut() {
                    o.push(c);
                }
                continue;
            }
            let e = self.peek().ok_or("a string not closed")?;
            self.at += 1;
            if raw {
                if let Some(o) = out.as_mut() {
                    o.push('\\');
                    o.push(e);
                }
                continue;
            }
            let decoded = match e {
                '\n' => Some(None),
                '\\' | '\'' | '"' => Some(Some(e)),
                'n' => Some(Some('\n')),
                't' => Some(Some('\t')),
                'r' => Some(Some('\r')),
                'a' => Some(Some('\x07')),
                'b' => Some(Some('\x08')),
                'f' => Some(Some('\x0c')),
                'v' => Some(Some('\x0b')),
                '0'..='7' => {
                    let mut n = e.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match self.peek().and_then(|c| c.to_digit(8)) {
                            Some(d) => {
                                n = n * 8 + d;
                                self.at += 1;
                            }
                            None => break,
                        }
                    }
                    Some(char::from_u32(n))
                }
                'x' | 'u' | 'U' => {
                    let len = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = self
                        .chars
                        .get(self.at..self.at + len)
                        .ok_or("a truncated escape")?
                        .iter()
                        .collect();
                    self.at += len;
                    let n = u32::from_str_radix(&hex, 16).map_err(|_| "a bad escape")?;
                    Some(Some(char::from_u32(n).ok_or("a bad escape")?))
                }
                // `\N{NAME}` and the like: a string the gate cannot spell out.
                _ if e == 'N' => None,
                // Python keeps an unknown escape as written.
                _ => {
                    if let Some(o) = out.as_mut() {
                        o.push('\\');
                    }
                    Some(Some(e))
                }
            };
            match decoded {
                Some(Some(c)) => {
                    if let Some(o) = out.as_mut() {
                        o.push(c);
                    }
                }
                Some(None) => {}
                None => out = None,
            }
        }
    }

    /// An int (a Python 2 `L` suffix allowed, as NumPy's header filter does) or a float.
    fn number(&mut self) -> Result<Literal, &'static str> {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_'))
        {
            self.at += 1;
        }
        let text: String = self.chars[start..self.at].iter().collect();
        let plain = text.replace('_', "");
        let int_text = plain.strip_suffix(['L', 'l']).unwrap_or(&plain);
        if let Ok(n) = int_text.parse::<i128>() {
            return Ok(Literal::Int(n));
        }
        if plain.parse::<f64>().is_ok() {
            return Ok(Literal::Float);
        }
        Err("not a number")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_spellings_parse_as_python_reads_them() {
        let d = parse(
            "{'descr': '<f4', \"fortran_order\": False, 'shape': (3, 4L), 'descr': '|' \"O\", }",
        )
        .unwrap();
        assert_eq!(d.get("descr"), Some(&Literal::Str("|O".into())));
        assert_eq!(d.get("fortran_order"), Some(&Literal::Bool(false)));
        assert_eq!(
            d.get("shape"),
            Some(&Literal::Tuple(vec![Literal::Int(3), Literal::Int(4)]))
        );
        assert_eq!(d.keys().unwrap(), ["descr", "fortran_order", "shape"]);
        assert_eq!(parse("'\\x4f'").unwrap(), Literal::Str("O".into()));
        assert_eq!(parse("u'\\u004F'").unwrap(), Literal::Str("O".into()));
        assert_eq!(parse("'\\117'").unwrap(), Literal::Str("O".into()));
        assert_eq!(
            parse("'\\N{LATIN CAPITAL LETTER O}'").unwrap(),
            Literal::Opaque
        );
        assert_eq!(parse("b'O'").unwrap(), Literal::Bytes);
        assert_eq!(parse("(1)").unwrap(), Literal::Int(1));
        assert_eq!(
            parse("(1,)").unwrap(),
            Literal::Tuple(vec![Literal::Int(1)])
        );
        assert_eq!(parse("()").unwrap(), Literal::Tuple(vec![]));
        assert_eq!(parse("'''a'b'''").unwrap(), Literal::Str("a'b".into()));
        for bad in [
            "{'a' 1}",
            "'open",
            "os.system",
            "{'a': 1",
            "[1, 2",
            "1 2",
            "f'x'",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).is_err());
    }
}
