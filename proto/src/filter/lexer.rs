//! Splits filter text into tokens, on demand, so errors are reported in text order.
//!
//! Tokens are punctuation (`(`, `)`, `,`, `=`, `!=`), double-quoted string literals (with
//! `\"` and `\\` as the only escapes) and *words*: maximal runs of `[A-Za-z0-9_.:/]`. A
//! word is a keyword, a field name or an IP address / CIDR; which one is for the parser to
//! decide from context, because `fe80::1` and `and` are both words. Whitespace separates
//! tokens and is otherwise ignored.

use super::error::FilterError;

/// One token and the byte range of text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: TokenKind<'a>,
    /// Byte offset of the token's first character.
    pub(crate) start: usize,
}

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind<'a> {
    LParen,
    RParen,
    Comma,
    Eq,
    Ne,
    /// A string literal, escapes resolved.
    Str(String),
    /// A keyword, field name or address, as written.
    Word(&'a str),
    /// End of the text.
    End,
}

impl TokenKind<'_> {
    /// How an error message names this token after "found".
    pub(crate) fn describe(&self) -> String {
        // Cut long tokens so one error stays on one terminal line.
        const MAX_SHOWN: usize = 40;
        let cut = |s: &str| -> String {
            if s.chars().count() > MAX_SHOWN {
                format!("{}...", s.chars().take(MAX_SHOWN).collect::<String>())
            } else {
                s.to_owned()
            }
        };
        match self {
            TokenKind::LParen => "`(`".into(),
            TokenKind::RParen => "`)`".into(),
            TokenKind::Comma => "`,`".into(),
            TokenKind::Eq => "`=`".into(),
            TokenKind::Ne => "`!=`".into(),
            TokenKind::Str(s) => format!("the string {}", cut(&quote(s))),
            TokenKind::Word(w) => format!("`{}`", cut(w)),
            TokenKind::End => "end of input".into(),
        }
    }
}

/// Writes `s` as a string literal the lexer reads back as `s`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Whether `c` may appear in a word (keyword, field, IPv4/IPv6 address, CIDR).
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/')
}

/// The tokenizer: a cursor over the text.
pub(crate) struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> FilterError {
        FilterError::at(self.text, offset, message)
    }

    /// The next token; `End` forever once the text is used up.
    pub(crate) fn next_token(&mut self) -> Result<Token<'a>, FilterError> {
        let rest = &self.text[self.pos..];
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r']);
        self.pos += rest.len() - trimmed.len();
        let start = self.pos;
        let Some(c) = trimmed.chars().next() else {
            return Ok(Token {
                kind: TokenKind::End,
                start,
            });
        };
        let kind = match c {
            '(' => self.punct(1, TokenKind::LParen),
            ')' => self.punct(1, TokenKind::RParen),
            ',' => self.punct(1, TokenKind::Comma),
            '=' => self.punct(1, TokenKind::Eq),
            '!' if trimmed.starts_with("!=") => self.punct(2, TokenKind::Ne),
            '"' => TokenKind::Str(self.string()?),
            c if is_word_char(c) => {
                let len = trimmed.find(|c| !is_word_char(c)).unwrap_or(trimmed.len());
                self.pos += len;
                TokenKind::Word(&trimmed[..len])
            }
            '\'' => {
                return Err(self.error(
                    start,
                    "string literals use double quotes (\"...\"), not single quotes",
                ))
            }
            c => {
                let hint = if c == '!' { "; did you mean `!=`?" } else { "" };
                return Err(self.error(
                    start,
                    format!(
                        "unexpected character {c:?}: expected a field, a keyword, a value, \
                         `(`, `)`, `,`, `=` or `!=`{hint}"
                    ),
                ));
            }
        };
        Ok(Token { kind, start })
    }

    fn punct(&mut self, len: usize, kind: TokenKind<'a>) -> TokenKind<'a> {
        self.pos += len;
        kind
    }

    /// Reads a string literal starting at the opening quote under the cursor.
    fn string(&mut self) -> Result<String, FilterError> {
        let open = self.pos;
        let mut out = String::new();
        let mut chars = self.text[open + 1..].char_indices();
        while let Some((i, c)) = chars.next() {
            let at = open + 1 + i;
            match c {
                '"' => {
                    self.pos = at + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, e)) => {
                        return Err(self.error(
                            at,
                            format!(
                                "unknown escape `\\{}` in a string literal: only `\\\"` and \
                                 `\\\\` are allowed",
                                e.escape_debug()
                            ),
                        ))
                    }
                    None => break,
                },
                c if c.is_control() => {
                    return Err(self.error(
                        at,
                        format!(
                            "control character {c:?} in a string literal: filter values are \
                             printable text"
                        ),
                    ))
                }
                c => out.push(c),
            }
        }
        Err(self.error(open, "unterminated string literal: expected a closing `\"`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Result<Vec<TokenKind<'_>>, FilterError> {
        let mut lexer = Lexer::new(text);
        let mut out = Vec::new();
        loop {
            let t = lexer.next_token()?;
            if t.kind == TokenKind::End {
                return Ok(out);
            }
            out.push(t.kind);
        }
    }

    #[test]
    fn words_hold_addresses_and_cidrs_whole() {
        use TokenKind::*;
        assert_eq!(
            kinds("ip in(10.0.0.0/8,fe80::1)!=x=\"a\"").expect("lexes"),
            vec![
                Word("ip"),
                Word("in"),
                LParen,
                Word("10.0.0.0/8"),
                Comma,
                Word("fe80::1"),
                RParen,
                Ne,
                Word("x"),
                Eq,
                Str("a".into())
            ]
        );
    }

    #[test]
    fn string_escapes_are_resolved_and_round_trip_through_quote() {
        let text = r#""say \"hi\" \\ é""#;
        assert_eq!(
            kinds(text).expect("lexes"),
            vec![TokenKind::Str(r#"say "hi" \ é"#.into())]
        );
        assert_eq!(quote(r#"say "hi" \ é"#), text);
    }

    #[test]
    fn string_errors_point_at_the_culprit() {
        let e = kinds(r#"x = "abc"#).expect_err("unterminated");
        assert_eq!(e.offset(), 4);
        assert!(e.message().contains("unterminated"), "{e}");
        let e = kinds(r#""a\nb""#).expect_err("bad escape");
        assert_eq!(e.offset(), 2);
        assert!(e.message().contains("unknown escape `\\n`"), "{e}");
        let e = kinds("\"a\u{7}\"").expect_err("control character");
        assert_eq!(e.offset(), 2);
        let e = kinds("\"abc\\").expect_err("escape at end");
        assert_eq!(e.offset(), 0);
    }

    #[test]
    fn stray_characters_are_refused_with_a_hint() {
        let e = kinds("country == 'USA'").expect_err("single quotes");
        assert_eq!(e.offset(), 11);
        assert!(e.message().contains("double quotes"), "{e}");
        let e = kinds("a ! b").expect_err("lone bang");
        assert!(e.message().contains("did you mean `!=`"), "{e}");
        let e = kinds("a & b").expect_err("ampersand");
        assert_eq!(e.column(), 3);
    }
}
