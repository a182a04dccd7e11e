//! Words of a Dockerfile instruction as the builder sees them: quotes
//! removed, the escape character honoured, and `$VAR`, `${VAR}`,
//! `${VAR:-word}`, `${VAR:+word}` (and `-`/`+` without the colon) replaced
//! from the variables in effect, as the Dockerfile reference describes for
//! ENV, ARG, FROM, COPY, ADD, WORKDIR, USER, LABEL, EXPOSE, VOLUME and
//! STOPSIGNAL. RUN, CMD and ENTRYPOINT are not expanded: their shell does it.

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated {0} quote")]
    Quote(char),
    #[error("missing '}}' in ${{...}}")]
    Brace,
    #[error("bad variable name in ${{{0}}}")]
    Name(String),
    #[error("unsupported modifier {0:?} in ${{...}}: use :-, :+, - or +")]
    Modifier(String),
}

/// Looks a variable up: `Some` when set (possibly empty).
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a dyn Vars,
    /// The last `words` call ended at its `stop` character.
    stopped: bool,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'a> Lexer<'a> {
    fn new(s: &str, escape: char, vars: &'a dyn Vars) -> Self {
        Lexer {
            chars: s.chars().collect(),
            pos: 0,
            escape,
            vars,
            stopped: false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += 1;
        c
    }

    /// Reads words up to the end (or, with `stop`, to an unquoted `stop`,
    /// which is consumed). `split`: whitespace separates words.
    fn words(&mut self, split: bool, stop: Option<char>) -> Result<Vec<String>, ExpandError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut stopped = false;
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                stopped = true;
                break;
            }
            if split && c.is_whitespace() {
                self.pos += 1;
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            in_word = true;
            self.pos += 1;
            match c {
                '\'' => loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(ExpandError::Quote('\'')),
                    }
                },
                '"' => loop {
                    match self.next() {
                        Some('"') => break,
                        Some('$') => cur.push_str(&self.variable()?),
                        Some(c) if c == self.escape => match self.next() {
                            Some(n @ ('"' | '$')) => cur.push(n),
                            Some(n) if n == self.escape => cur.push(n),
                            Some(n) => {
                                cur.push(c);
                                cur.push(n);
                            }
                            None => return Err(ExpandError::Quote('"')),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(ExpandError::Quote('"')),
                    }
                },
                '$' => cur.push_str(&self.variable()?),
                c if c == self.escape => match self.next() {
                    Some(n) => cur.push(n),
                    None => cur.push(c),
                },
                c => cur.push(c),
            }
        }
        if in_word || (!split && words.is_empty()) {
            words.push(cur);
        }
        self.stopped = stopped;
        Ok(words)
    }

    /// After a `$`: the variable's value (or `$` itself when no name follows).
    fn variable(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if is_name_char(c) => {
                let name = self.name();
                Ok(self.vars.get(&name).unwrap_or_default())
            }
            _ => Ok("$".into()),
        }
    }

    /// A variable's name: the letters, digits and underscores from here.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn braced(&mut self) -> Result<String, ExpandError> {
        let name = self.name();
        if name.is_empty() {
            let rest: String = self.chars[self.pos..]
                .iter()
                .take_while(|c| **c != '}')
                .collect();
            return Err(ExpandError::Name(rest));
        }
        let value = self.vars.get(&name);
        let op = match self.next() {
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(':') => match self.next() {
                Some('-') => ":-",
                Some('+') => ":+",
                Some(c) => return Err(ExpandError::Modifier(format!(":{c}"))),
                None => return Err(ExpandError::Brace),
            },
            Some('-') => "-",
            Some('+') => "+",
            Some(c) => return Err(ExpandError::Modifier(c.to_string())),
            None => return Err(ExpandError::Brace),
        };
        // The word after the modifier may hold quotes and variables itself.
        let word = self.words(false, Some('}'))?.concat();
        if !self.stopped {
            return Err(ExpandError::Brace);
        }
        let set = value.is_some();
        let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
        Ok(match op {
            ":-" if non_empty => value.unwrap_or_default(),
            ":-" => word,
            "-" if set => value.unwrap_or_default(),
            "-" => word,
            ":+" if non_empty => word,
            "+" if set => word,
            _ => String::new(),
        })
    }
}

/// `s` as one word: quotes removed, variables replaced (spaces kept).
pub fn word(s: &str, escape: char, vars: &dyn Vars) -> Result<String, ExpandError> {
    Ok(Lexer::new(s, escape, vars).words(false, None)?.concat())
}

/// `s` as whitespace-separated words, each with quotes removed and
/// variables replaced (a quoted space stays inside its word).
pub fn words(s: &str, escape: char, vars: &dyn Vars) -> Result<Vec<String>, ExpandError> {
    Lexer::new(s, escape, vars).words(true, None)
}

/// Splits `s` at unquoted whitespace, keeping quotes and escapes as they
/// are (for `KEY=VALUE` lists, whose values are expanded afterwards).
pub fn split_raw(s: &str, escape: char) -> Result<Vec<String>, ExpandError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some('"') if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if let Some(q) = quote {
        return Err(ExpandError::Quote(q));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "FOO" => Some("foo".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("a b".into()),
            _ => None,
        }
    }

    fn w(s: &str) -> String {
        word(s, '\\', &vars).unwrap()
    }

    #[test]
    fn reference_examples() {
        // From the Dockerfile reference's "Environment replacement".
        assert_eq!(w("$FOO"), "foo");
        assert_eq!(w("${FOO}"), "foo");
        assert_eq!(w("${FOO}_bar"), "foo_bar");
        assert_eq!(w("$FOO_bar"), ""); // the name is FOO_bar
        assert_eq!(w("\\$FOO"), "$FOO");
        assert_eq!(w("\\${FOO}"), "${FOO}");
        assert_eq!(w("${NOPE:-word}"), "word");
        assert_eq!(w("${EMPTY:-word}"), "word");
        assert_eq!(w("${EMPTY-word}"), "");
        assert_eq!(w("${FOO:-word}"), "foo");
        assert_eq!(w("${FOO:+word}"), "word");
        assert_eq!(w("${NOPE:+word}"), "");
        assert_eq!(w("${EMPTY:+word}"), "");
        assert_eq!(w("${EMPTY+word}"), "word");
        assert_eq!(w("${NOPE:-$FOO/x}"), "foo/x");
        assert_eq!(w("/usr/${NOPE:-lib}/x"), "/usr/lib/x");
        assert_eq!(w("${NOPE:-${FOO:-x}}"), "foo");
        assert_eq!(word("${A:-${B:-x}", '\\', &vars), Err(ExpandError::Brace));
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$FOO'"), "$FOO");
        assert_eq!(w("\"$FOO bar\""), "foo bar");
        assert_eq!(w("\"a\\\"b\""), "a\"b");
        assert_eq!(w("a\\ b"), "a b");
        assert_eq!(w("cost: $"), "cost: $");
        assert_eq!(word("`$FOO", '`', &vars).unwrap(), "$FOO");
        assert_eq!(
            words("a \"b c\" $SP 'd e'", '\\', &vars).unwrap(),
            vec!["a", "b c", "a b", "d e"]
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(word("\"abc", '\\', &vars), Err(ExpandError::Quote('"')));
        assert_eq!(word("'abc", '\\', &vars), Err(ExpandError::Quote('\'')));
        assert_eq!(word("${FOO", '\\', &vars), Err(ExpandError::Brace));
        assert_eq!(word("${FOO:-x", '\\', &vars), Err(ExpandError::Brace));
        assert!(matches!(
            word("${FOO:?x}", '\\', &vars),
            Err(ExpandError::Modifier(_))
        ));
        assert!(matches!(
            word("${}", '\\', &vars),
            Err(ExpandError::Name(_))
        ));
    }

    #[test]
    fn raw_split_keeps_quotes() {
        assert_eq!(
            split_raw("a=\"b c\" d='e f' g=h\\ i", '\\').unwrap(),
            vec!["a=\"b c\"", "d='e f'", "g=h\\ i"]
        );
        assert!(split_raw("a=\"b", '\\').is_err());
    }
}
