//! Recursive-descent parser from filter text to [`Filter`], with the language's limits.
//!
//! ```text
//! filter    = or_expr EOF
//! or_expr   = and_expr { "or" and_expr }
//! and_expr  = unary { "and" unary }
//! unary     = "not" unary | "(" or_expr ")" | predicate
//! ```
//!
//! Recursion happens only through `not` and `(`, and each counts one level against
//! [`MAX_DEPTH`], so hostile input cannot overflow the stack; `and`/`or` chains are
//! loops. Type checking happens here too: each field accepts only the operators and
//! literals of its type, so a parsed [`Filter`] cannot fail at evaluation.

use std::net::IpAddr;

use ipnet::IpNet;

use super::ast::{Expr, Filter, IpSet, IpTest, TextField, TextSet, TextTest};
use super::error::FilterError;
use super::lexer::{Lexer, Token, TokenKind};
use crate::model::{AdId, MAX_COUNTRY_LEN, MAX_USER_ID_LEN};

/// Longest accepted filter text, in bytes; a parsed filter's canonical form also fits.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest accepted nesting: each `(` and each `not` opens one level.
pub const MAX_DEPTH: usize = 32;
/// Most items in one `in` list.
pub const MAX_LIST_ITEMS: usize = 1024;

impl Filter {
    /// Parses and type-checks a filter, e.g. `country = "USA" and ip in 10.0.0.0/8`.
    ///
    /// Errors name the position and what was expected there. Never panics, whatever the
    /// input; inputs beyond [`MAX_FILTER_LEN`], [`MAX_DEPTH`] or [`MAX_LIST_ITEMS`] are
    /// errors.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError::at(
                text,
                MAX_FILTER_LEN,
                format!(
                    "filter is {} bytes, longer than the limit of {MAX_FILTER_LEN}",
                    text.len()
                ),
            ));
        }
        let mut parser = Parser::new(text)?;
        let expr = parser.or_expr()?;
        if parser.tok.kind != TokenKind::End {
            return Err(parser.unexpected("`and`, `or` or end of input"));
        }
        let filter = Filter { expr };
        // The canonical form can be longer than the input (spaces, expanded addresses);
        // refusing such filters keeps `parse(display(f)) == f` true for every filter.
        let canonical = filter.to_string().len();
        if canonical > MAX_FILTER_LEN {
            return Err(FilterError::at(
                text,
                0,
                format!(
                    "filter's canonical form is {canonical} bytes, longer than the limit of \
                     {MAX_FILTER_LEN}"
                ),
            ));
        }
        Ok(filter)
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Filter::parse(s)
    }
}

/// A keyword or field, recognised case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    And,
    Or,
    Not,
    In,
    StartsWith,
    Text(TextField),
    Ip,
}

fn word(w: &str) -> Option<Word> {
    const WORDS: [(&str, Word); 9] = [
        ("and", Word::And),
        ("or", Word::Or),
        ("not", Word::Not),
        ("in", Word::In),
        ("starts_with", Word::StartsWith),
        ("country", Word::Text(TextField::Country)),
        ("user_id", Word::Text(TextField::UserId)),
        ("ad_id", Word::Text(TextField::AdId)),
        ("ip", Word::Ip),
    ];
    WORDS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(w))
        .map(|&(_, kw)| kw)
}

struct Parser<'a> {
    text: &'a str,
    lexer: Lexer<'a>,
    /// The lookahead token.
    tok: Token<'a>,
    /// Open `(` and `not` levels.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Result<Self, FilterError> {
        let mut lexer = Lexer::new(text);
        let tok = lexer.next_token()?;
        Ok(Self {
            text,
            lexer,
            tok,
            depth: 0,
        })
    }

    /// Consumes the lookahead and returns it.
    fn bump(&mut self) -> Result<Token<'a>, FilterError> {
        let next = self.lexer.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> FilterError {
        FilterError::at(self.text, offset, message)
    }

    /// "expected X, found <lookahead>" at the lookahead.
    fn unexpected(&self, expected: &str) -> FilterError {
        self.error(
            self.tok.start,
            format!("expected {expected}, found {}", self.tok.kind.describe()),
        )
    }

    fn at_word(&self, w: Word) -> bool {
        matches!(self.tok.kind, TokenKind::Word(s) if word(s) == Some(w))
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut xs = vec![self.and_expr()?];
        while self.at_word(Word::Or) {
            self.bump()?;
            xs.push(self.and_expr()?);
        }
        Ok(if xs.len() == 1 {
            xs.swap_remove(0)
        } else {
            Expr::Or(xs)
        })
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut xs = vec![self.unary()?];
        while self.at_word(Word::And) {
            self.bump()?;
            xs.push(self.unary()?);
        }
        Ok(if xs.len() == 1 {
            xs.swap_remove(0)
        } else {
            Expr::And(xs)
        })
    }

    /// Enters one nesting level at the lookahead, or refuses to.
    fn descend(&mut self) -> Result<(), FilterError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                self.tok.start,
                format!(
                    "filter nests deeper than {MAX_DEPTH} levels (each `(` and `not` opens one)"
                ),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        const OPERAND: &str = "a field (country, ip, user_id, ad_id), `not` or `(`";
        match self.tok.kind {
            TokenKind::Word(w) if word(w) == Some(Word::Not) => {
                self.descend()?;
                self.bump()?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Not(Box::new(inner)))
            }
            TokenKind::LParen => {
                self.descend()?;
                let open = self.bump()?;
                let inner = self.or_expr()?;
                if self.tok.kind != TokenKind::RParen {
                    let column = FilterError::at(self.text, open.start, "").column();
                    return Err(self.unexpected(&format!(
                        "`and`, `or` or `)` to close the `(` at column {column}"
                    )));
                }
                self.bump()?;
                self.depth -= 1;
                Ok(inner)
            }
            TokenKind::Word(w) => match word(w) {
                Some(Word::Text(field)) => {
                    self.bump()?;
                    self.text_test(field).map(|t| Expr::Text(field, t))
                }
                Some(Word::Ip) => {
                    self.bump()?;
                    self.ip_test().map(Expr::Ip)
                }
                _ => Err(self.unexpected(OPERAND)),
            },
            _ => Err(self.unexpected(OPERAND)),
        }
    }

    /// Parses `not in` / `in` after a field; returns whether it was negated, or `None` if
    /// the lookahead is neither.
    fn membership(&mut self) -> Result<Option<bool>, FilterError> {
        if self.at_word(Word::In) {
            self.bump()?;
            return Ok(Some(false));
        }
        if self.at_word(Word::Not) {
            self.bump()?;
            if !self.at_word(Word::In) {
                return Err(self.unexpected("`in` after `not`"));
            }
            self.bump()?;
            return Ok(Some(true));
        }
        Ok(None)
    }

    fn text_test(&mut self, field: TextField) -> Result<TextTest, FilterError> {
        match self.tok.kind {
            TokenKind::Eq => {
                self.bump()?;
                Ok(TextTest::Eq(self.text_literal(field, false)?))
            }
            TokenKind::Ne => {
                self.bump()?;
                Ok(TextTest::Ne(self.text_literal(field, false)?))
            }
            TokenKind::Word(w) if word(w) == Some(Word::StartsWith) => {
                self.bump()?;
                Ok(TextTest::StartsWith(self.text_literal(field, true)?))
            }
            _ => match self.membership()? {
                Some(negated) => {
                    let set = TextSet::new(self.text_list(field)?);
                    Ok(if negated {
                        TextTest::NotIn(set)
                    } else {
                        TextTest::In(set)
                    })
                }
                None => Err(self.unexpected(&format!(
                    "an operator for {} (=, !=, in, not in, starts_with)",
                    field.name()
                ))),
            },
        }
    }

    /// A parenthesised, non-empty list of string literals.
    fn text_list(&mut self, field: TextField) -> Result<Vec<String>, FilterError> {
        if self.tok.kind != TokenKind::LParen {
            return Err(self.unexpected(&format!(
                "`(` opening a list of strings, e.g. {} in (\"a\", \"b\"){}",
                field.name(),
                self.value_hint(field)
            )));
        }
        self.bump()?;
        let mut items = Vec::new();
        loop {
            self.check_list_len(items.len())?;
            items.push(self.text_literal(field, false)?);
            match self.tok.kind {
                TokenKind::Comma => {
                    self.bump()?;
                }
                TokenKind::RParen => {
                    self.bump()?;
                    return Ok(items);
                }
                _ => return Err(self.unexpected("`,` or `)` in the list")),
            }
        }
    }

    fn check_list_len(&self, len: usize) -> Result<(), FilterError> {
        if len >= MAX_LIST_ITEMS {
            return Err(self.error(
                self.tok.start,
                format!("list has more than {MAX_LIST_ITEMS} items"),
            ));
        }
        Ok(())
    }

    /// A string literal valid for `field`: one that some click could hold (or, with
    /// `prefix`, start with). Values no click can have are errors, not silent mismatches.
    fn text_literal(&mut self, field: TextField, prefix: bool) -> Result<String, FilterError> {
        let start = self.tok.start;
        let s = match &mut self.tok.kind {
            // Taken, not cloned: the token is consumed right below.
            TokenKind::Str(s) => std::mem::take(s),
            _ => {
                return Err(self.unexpected(&format!(
                    "a string literal in double quotes{}",
                    self.value_hint(field)
                )))
            }
        };
        self.bump()?;
        let max = match field {
            TextField::Country => MAX_COUNTRY_LEN,
            TextField::UserId => MAX_USER_ID_LEN,
            TextField::AdId => {
                // A prefix obeys the ad id rules too: a value outside them starts no ad id.
                if let Err(e) = AdId::new(&s) {
                    let what = if prefix {
                        "an ad_id prefix"
                    } else {
                        "an ad_id"
                    };
                    return Err(self.error(
                        start,
                        format!("{what} is 1 to 64 bytes of [A-Za-z0-9_.:-]: {e}"),
                    ));
                }
                return Ok(s);
            }
        };
        if s.len() > max {
            return Err(self.error(
                start,
                format!(
                    "{} values are at most {max} bytes; this one is {}",
                    field.name(),
                    s.len()
                ),
            ));
        }
        Ok(s)
    }

    /// A hint for a bare word where `field` wanted a string literal.
    fn value_hint(&self, field: TextField) -> String {
        match self.tok.kind {
            TokenKind::Word(w) if w.parse::<IpNet>().is_ok() || w.parse::<IpAddr>().is_ok() => {
                format!(" ({} holds text, not addresses)", field.name())
            }
            TokenKind::Word(w) if word(w).is_none() => format!(" (write \"{w}\")"),
            _ => String::new(),
        }
    }

    fn ip_test(&mut self) -> Result<IpTest, FilterError> {
        match self.tok.kind {
            TokenKind::Eq => {
                self.bump()?;
                Ok(IpTest::Eq(self.ip_addr()?))
            }
            TokenKind::Ne => {
                self.bump()?;
                Ok(IpTest::Ne(self.ip_addr()?))
            }
            TokenKind::Word(w) if word(w) == Some(Word::StartsWith) => Err(self.error(
                self.tok.start,
                "`starts_with` compares text and ip is an address: use `ip in <network>`, \
                 e.g. ip in 10.0.0.0/8",
            )),
            _ => match self.membership()? {
                Some(negated) => {
                    let set = IpSet::new(self.ip_list()?);
                    Ok(if negated {
                        IpTest::NotIn(set)
                    } else {
                        IpTest::In(set)
                    })
                }
                None => Err(self.unexpected("an operator for ip (=, !=, in, not in)")),
            },
        }
    }

    /// One address, as after `ip =`.
    fn ip_addr(&mut self) -> Result<IpAddr, FilterError> {
        let start = self.tok.start;
        let net = self.ip_net("an IP address")?;
        if net.prefix_len() != net.max_prefix_len() {
            return Err(self.error(
                start,
                format!("`=` and `!=` compare one address; for a network write `ip in {net}`"),
            ));
        }
        Ok(net.addr())
    }

    /// A network or address, or a parenthesised list of them, as after `ip in`.
    fn ip_list(&mut self) -> Result<Vec<IpNet>, FilterError> {
        const ONE: &str = "an IP address or network (e.g. 10.0.0.0/8)";
        if self.tok.kind != TokenKind::LParen {
            let net = self.ip_net(&format!("{ONE} or a parenthesised list of them"))?;
            return Ok(vec![net]);
        }
        self.bump()?;
        let mut nets = Vec::new();
        loop {
            self.check_list_len(nets.len())?;
            nets.push(self.ip_net(ONE)?);
            match self.tok.kind {
                TokenKind::Comma => {
                    self.bump()?;
                }
                TokenKind::RParen => {
                    self.bump()?;
                    return Ok(nets);
                }
                _ => return Err(self.unexpected("`,` or `)` in the list")),
            }
        }
    }

    /// An address (a network of one) or a CIDR network without host bits.
    fn ip_net(&mut self, expected: &str) -> Result<IpNet, FilterError> {
        let start = self.tok.start;
        let TokenKind::Word(w) = self.tok.kind else {
            let hint = if matches!(self.tok.kind, TokenKind::Str(_)) {
                " (addresses are written without quotes)"
            } else {
                ""
            };
            return Err(self.unexpected(&format!("{expected}{hint}")));
        };
        let net = if w.contains('/') {
            w.parse::<IpNet>().ok()
        } else {
            w.parse::<IpAddr>().ok().map(IpNet::from)
        };
        let Some(net) = net else {
            return Err(self.unexpected(expected));
        };
        if net.trunc() != net {
            return Err(self.error(
                start,
                format!(
                    "network {w} has host bits set: write {} (or the address without a prefix)",
                    net.trunc()
                ),
            ));
        }
        if let IpNet::V6(v6) = net {
            // Mapped literals would never match: clicks from `::ffff:a.b.c.d` are matched as
            // the IPv4 address.
            if let (true, Some(v4)) = (v6.prefix_len() >= 96, v6.network().to_ipv4_mapped()) {
                let v4 = match v6.prefix_len() {
                    128 => v4.to_string(),
                    len => format!("{v4}/{}", len - 96),
                };
                return Err(self.error(
                    start,
                    format!(
                        "{w} is IPv4-mapped, and clicks from such addresses are matched as \
                         IPv4: write {v4}"
                    ),
                ));
            }
        }
        self.bump()?;
        Ok(net)
    }
}
