//! The parsed form of a filter, how it prints and how it is evaluated on a click.
//!
//! Invariants, established by the parser (and by the test generators, which build trees
//! through the same constructors):
//! - `And` and `Or` have at least two operands; a parenthesised `and` inside an `and`
//!   stays a child node, so printing reproduces the tree exactly.
//! - Lists are sorted and free of duplicates, never empty; IP networks have no host bits
//!   set and no literal is an IPv4-mapped IPv6 address. This makes the printed form
//!   canonical: equal filters print equally, and `parse(print(f)) == f`.
//! - Nesting depth, list sizes and printed length are within the limits in
//!   [`super::parser`], so every filter's canonical text parses again.
//!
//! Evaluation reads only the click and the tree: no clock, no randomness, no allocation.
//! String lists are searched by binary search; IP lists through merged, sorted ranges of
//! integers, so a 1024-network list costs about ten comparisons per click.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::lexer::quote;
use crate::model::Click;

/// A parsed filter: a predicate over a click's attributes.
///
/// Built only by [`Filter::parse`]; it prints (`Display`) in a canonical form that parses
/// back to an equal filter. Evaluate it with [`Filter::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub(crate) expr: Expr,
}

impl Filter {
    /// Whether `click` satisfies the filter. Deterministic and allocation-free, so it can
    /// run in the state machine's apply for every click.
    ///
    /// An IPv4-mapped IPv6 click address (`::ffff:a.b.c.d`) is matched as the IPv4
    /// address `a.b.c.d`, so dual-stack sources and IPv4 sources match the same filters.
    pub fn matches(&self, click: &Click) -> bool {
        self.expr.matches(click, click.ip.to_canonical())
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

/// A node of the predicate tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// True if any operand is (at least two operands).
    Or(Vec<Expr>),
    /// True if every operand is (at least two operands).
    And(Vec<Expr>),
    /// Negation.
    Not(Box<Expr>),
    /// A test on a text field.
    Text(TextField, TextTest),
    /// A test on the client address.
    Ip(IpTest),
}

/// The text-valued fields of a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextField {
    Country,
    UserId,
    AdId,
}

impl TextField {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TextField::Country => "country",
            TextField::UserId => "user_id",
            TextField::AdId => "ad_id",
        }
    }

    /// The field's bytes in `click`; compared bytewise, which for UTF-8 is the same order
    /// as comparing the strings.
    fn value(self, click: &Click) -> &[u8] {
        match self {
            TextField::Country => click.country.as_bytes(),
            TextField::UserId => click.user_id.as_bytes(),
            TextField::AdId => click.ad_id.as_bytes(),
        }
    }
}

/// A test on a text field; values compare exactly (case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextTest {
    Eq(String),
    Ne(String),
    In(TextSet),
    NotIn(TextSet),
    StartsWith(String),
}

impl TextTest {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            TextTest::Eq(s) => value == s.as_bytes(),
            TextTest::Ne(s) => value != s.as_bytes(),
            TextTest::In(set) => set.contains(value),
            TextTest::NotIn(set) => !set.contains(value),
            TextTest::StartsWith(p) => value.starts_with(p.as_bytes()),
        }
    }
}

/// A list of strings, sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextSet(Vec<String>);

impl TextSet {
    pub(crate) fn new(mut items: Vec<String>) -> Self {
        assert!(!items.is_empty(), "a filter list must not be empty");
        items.sort_unstable();
        items.dedup();
        Self(items)
    }

    pub(crate) fn items(&self) -> &[String] {
        &self.0
    }

    fn contains(&self, value: &[u8]) -> bool {
        self.0.binary_search_by(|s| s.as_bytes().cmp(value)).is_ok()
    }
}

/// A test on the client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IpTest {
    Eq(IpAddr),
    Ne(IpAddr),
    In(IpSet),
    NotIn(IpSet),
}

impl IpTest {
    fn matches(&self, ip: IpAddr) -> bool {
        match self {
            IpTest::Eq(a) => ip == *a,
            IpTest::Ne(a) => ip != *a,
            IpTest::In(set) => set.contains(ip),
            IpTest::NotIn(set) => !set.contains(ip),
        }
    }
}

/// A list of networks (an address is a network of one), sorted and deduplicated for
/// printing, plus the same networks as merged integer ranges for lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpSet {
    nets: Vec<IpNet>,
    /// Disjoint, non-adjacent, sorted inclusive ranges covering the IPv4 networks.
    v4: Vec<(u32, u32)>,
    /// The same for the IPv6 networks.
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    pub(crate) fn new(nets: Vec<IpNet>) -> Self {
        assert!(!nets.is_empty(), "a filter list must not be empty");
        let mut nets: Vec<IpNet> = nets.iter().map(IpNet::trunc).collect();
        nets.sort_unstable();
        nets.dedup();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in &nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            nets,
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub(crate) fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

/// Sorts inclusive ranges and merges overlapping or adjacent ones.
fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if last.1.succ().is_none_or(|next| lo <= next) => {
                last.1 = last.1.max(hi);
            }
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Whether `x` lies in one of the sorted, disjoint inclusive `ranges`.
fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(_, hi)| hi < x);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= x)
}

mod num_like {
    /// The next integer, if any: lets range merging treat adjacent ranges as one.
    pub(super) trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

impl Expr {
    fn matches(&self, click: &Click, ip: IpAddr) -> bool {
        match self {
            Expr::Or(xs) => xs.iter().any(|x| x.matches(click, ip)),
            Expr::And(xs) => xs.iter().all(|x| x.matches(click, ip)),
            Expr::Not(x) => !x.matches(click, ip),
            Expr::Text(field, test) => test.matches(field.value(click)),
            Expr::Ip(test) => test.matches(ip),
        }
    }

    /// Prints `self` as an operand of `parent`, in parentheses where precedence (or the
    /// tree's shape, for `and` inside `and`) needs them.
    fn fmt_operand(&self, f: &mut fmt::Formatter<'_>, parenthesise_and: bool) -> fmt::Result {
        let paren = match self {
            Expr::Or(_) => true,
            Expr::And(_) => parenthesise_and,
            _ => false,
        };
        if paren {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for Expr {
    /// The canonical form: lower-case keywords, one space around operators, parentheses
    /// only where needed, lists sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(xs) | Expr::And(xs) => {
                let (sep, paren_and) = match self {
                    Expr::Or(_) => (" or ", false),
                    _ => (" and ", true),
                };
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    x.fmt_operand(f, paren_and)?;
                }
                Ok(())
            }
            Expr::Not(x) => {
                f.write_str("not ")?;
                x.fmt_operand(f, true)
            }
            Expr::Text(field, test) => {
                f.write_str(field.name())?;
                match test {
                    TextTest::Eq(s) => write!(f, " = {}", quote(s)),
                    TextTest::Ne(s) => write!(f, " != {}", quote(s)),
                    TextTest::In(set) => write!(f, " in {}", TextList(set)),
                    TextTest::NotIn(set) => write!(f, " not in {}", TextList(set)),
                    TextTest::StartsWith(s) => write!(f, " starts_with {}", quote(s)),
                }
            }
            Expr::Ip(test) => match test {
                IpTest::Eq(a) => write!(f, "ip = {a}"),
                IpTest::Ne(a) => write!(f, "ip != {a}"),
                IpTest::In(set) => write!(f, "ip in {}", IpList(set)),
                IpTest::NotIn(set) => write!(f, "ip not in {}", IpList(set)),
            },
        }
    }
}

struct TextList<'a>(&'a TextSet);

impl fmt::Display for TextList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, s) in self.0.items().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&quote(s))?;
        }
        f.write_str(")")
    }
}

struct IpList<'a>(&'a IpSet);

impl fmt::Display for IpList<'_> {
    /// One network prints bare (`10.0.0.0/8`), several in parentheses; a network of one
    /// address prints as the address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets = self.0.nets();
        let one = |f: &mut fmt::Formatter<'_>, n: &IpNet| {
            if n.prefix_len() == n.max_prefix_len() {
                write!(f, "{}", n.addr())
            } else {
                write!(f, "{n}")
            }
        };
        if let [n] = nets {
            return one(f, n);
        }
        f.write_str("(")?;
        for (i, n) in nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            one(f, n)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test networks are valid")
    }

    #[test]
    fn ip_sets_merge_overlapping_and_adjacent_networks() {
        let set = IpSet::new(vec![
            net("10.0.1.0/24"),
            net("10.0.0.0/24"),
            net("10.0.0.0/16"),
            net("192.168.0.0/24"),
            net("192.168.1.0/24"),
            net("255.255.255.255/32"),
            net("::/0"),
        ]);
        assert_eq!(
            set.v4,
            vec![
                (0x0a00_0000, 0x0a00_ffff),
                (0xc0a8_0000, 0xc0a8_01ff),
                (u32::MAX, u32::MAX)
            ]
        );
        assert_eq!(set.v6, vec![(0, u128::MAX)]);
        assert_eq!(set.nets().len(), 7);
        for (ip, inside) in [
            ("10.0.200.1", true),
            ("10.1.0.0", false),
            ("192.168.1.255", true),
            ("192.168.2.0", false),
            ("255.255.255.255", true),
            ("9.255.255.255", false),
            ("::", true),
        ] {
            let ip: IpAddr = ip.parse().expect("test addresses are valid");
            assert_eq!(set.contains(ip), inside, "{ip}");
        }
    }

    #[test]
    fn sets_are_sorted_and_deduplicated() {
        let set = TextSet::new(vec!["b".into(), "a".into(), "b".into()]);
        assert_eq!(set.items(), ["a", "b"]);
        assert!(set.contains(b"a") && !set.contains(b"c"));
        let set = IpSet::new(vec![net("::1/128"), net("1.2.3.4/32"), net("1.2.3.4/32")]);
        assert_eq!(set.nets(), [net("1.2.3.4/32"), net("::1/128")]);
    }
}
