//! Behaviour of the filter language as users see it: the documented examples, precedence,
//! every error with its message, and the canonical form.

use std::net::IpAddr;

use super::*;
use crate::model::{AdId, Click, EventId};

fn click(ad_id: &str, user_id: &str, ip: &str, country: &str) -> Click {
    Click {
        event_id: EventId::new(&b"e-1"[..]).expect("a valid event id"),
        ad_id: AdId::new(ad_id).expect("a valid ad id"),
        event_time_ms: 1_720_483_201_000,
        user_id: user_id.to_owned(),
        ip: ip.parse::<IpAddr>().expect("a valid address"),
        country: country.to_owned(),
    }
}

fn parse(text: &str) -> Filter {
    Filter::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

fn matches(text: &str, c: &Click) -> bool {
    parse(text).matches(c)
}

/// The full message (position included) of the error `text` produces.
fn error(text: &str) -> String {
    match Filter::parse(text) {
        Ok(f) => panic!("{text:?} should not parse, got {f}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn brief_example_matches_us_clicks_from_private_range() {
    let f = "country = \"USA\" and ip in 10.0.0.0/8";
    assert!(matches(f, &click("ad001", "user-1", "10.1.2.3", "USA")));
    assert!(!matches(f, &click("ad001", "user-1", "11.1.2.3", "USA")));
    assert!(!matches(f, &click("ad001", "user-1", "10.1.2.3", "CAN")));
    assert_eq!(parse(f).to_string(), f);
}

#[test]
fn in_lists_match_any_member_exactly() {
    let us = click("ad001", "user-1", "207.148.22.22", "USA");
    let ca = click("ad001", "user-1", "207.148.22.22", "CAN");
    let mx = click("ad001", "user-1", "207.148.22.22", "MEX");
    let lower = click("ad001", "user-1", "207.148.22.22", "usa");
    let f = "country in (\"USA\", \"CAN\")";
    assert!(matches(f, &us) && matches(f, &ca));
    assert!(
        !matches(f, &mx) && !matches(f, &lower),
        "values are case-sensitive"
    );
    let f = "country not in (\"USA\", \"CAN\")";
    assert!(!matches(f, &us) && matches(f, &mx));
    assert!(matches("country != \"USA\"", &ca) && !matches("country != \"USA\"", &us));
}

#[test]
fn ip_tests_take_addresses_networks_and_mixed_lists() {
    let v4 = click("ad001", "u", "10.9.8.7", "USA");
    let v6 = click("ad001", "u", "::1", "USA");
    let other = click("ad001", "u", "2001:db8::1", "USA");
    let f = "ip in (10.0.0.0/8, ::1/128)";
    assert!(matches(f, &v4) && matches(f, &v6) && !matches(f, &other));
    assert!(matches("ip not in (10.0.0.0/8, ::1/128)", &other));
    assert!(matches("ip in 2001:db8::/32", &other));
    assert!(matches("ip = 10.9.8.7", &v4) && !matches("ip = 10.9.8.7", &v6));
    assert!(matches("ip != 10.9.8.7", &v6));
    assert!(
        matches("ip in 10.9.8.7", &v4),
        "a bare address is a network of one"
    );
}

#[test]
fn ipv4_mapped_click_addresses_match_as_ipv4() {
    let mapped = click("ad001", "u", "::ffff:10.1.2.3", "USA");
    assert!(matches("ip in 10.0.0.0/8", &mapped));
    assert!(matches("ip = 10.1.2.3", &mapped));
    assert!(!matches("ip in ::/0", &mapped));
}

#[test]
fn starts_with_matches_string_prefixes() {
    let c = click("camp7:ad1", "user-1", "1.2.3.4", "USA");
    assert!(matches("ad_id starts_with \"camp7:\"", &c));
    assert!(!matches("ad_id starts_with \"camp70\"", &c));
    assert!(matches("user_id starts_with \"user-\"", &c));
    assert!(
        matches("country starts_with \"\"", &c),
        "the empty prefix starts everything"
    );
    assert!(matches(
        "ad_id = \"camp7:ad1\" and user_id = \"user-1\"",
        &c
    ));
}

#[test]
fn keywords_and_fields_are_case_insensitive_values_are_not() {
    let c = click("ad001", "u", "1.2.3.4", "USA");
    let f = parse("COUNTRY = \"USA\" AND NOT Ip In 10.0.0.0/8 Or User_Id Starts_With \"x\"");
    assert!(f.matches(&c));
    assert_eq!(
        f.to_string(),
        "country = \"USA\" and not ip in 10.0.0.0/8 or user_id starts_with \"x\""
    );
    assert!(!matches("country = \"usa\"", &c));
}

#[test]
fn string_escapes_reach_the_compared_value() {
    let c = click("ad001", r#"say "hi" \o/"#, "1.2.3.4", "USA");
    let f = r#"user_id = "say \"hi\" \\o/""#;
    assert!(matches(f, &c));
    assert_eq!(parse(f).to_string(), f);
}

#[test]
fn not_binds_tighter_than_and_which_binds_tighter_than_or() {
    // a or b and c == a or (b and c)
    assert_eq!(
        parse("country = \"A\" or country = \"B\" and user_id = \"C\""),
        parse("country = \"A\" or (country = \"B\" and user_id = \"C\")")
    );
    // not a and b == (not a) and b
    assert_eq!(
        parse("not country = \"A\" and user_id = \"C\""),
        parse("(not country = \"A\") and user_id = \"C\"")
    );
    let only_a = click("ad001", "x", "1.2.3.4", "A");
    let f = "country = \"A\" or country = \"B\" and user_id = \"C\"";
    assert!(matches(f, &only_a), "or is the loosest");
    let f = "(country = \"A\" or country = \"B\") and user_id = \"C\"";
    assert!(!matches(f, &only_a), "parentheses override it");
    assert!(!matches("not country = \"A\" or user_id = \"y\"", &only_a));
    assert!(matches("not not country = \"A\"", &only_a));
    assert!(matches(
        "not (country = \"B\" and user_id = \"x\")",
        &only_a
    ));
}

#[test]
fn display_is_canonical_and_parses_back() {
    for (input, canonical) in [
        ("country=\"USA\"", "country = \"USA\""),
        ("((country = \"USA\"))", "country = \"USA\""),
        (
            "country in (\"USA\",\"CAN\",\"USA\")",
            "country in (\"CAN\", \"USA\")",
        ),
        ("ip in (::1/128)", "ip in ::1"),
        (
            "ip IN (10.0.0.0/8,1.2.3.4/32, 0:0::1)",
            "ip in (1.2.3.4, 10.0.0.0/8, ::1)",
        ),
        ("ip not in 2001:DB8::/32", "ip not in 2001:db8::/32"),
        (
            "country = \"A\" or (country = \"B\" or country = \"C\")",
            "country = \"A\" or (country = \"B\" or country = \"C\")",
        ),
        (
            "(country = \"A\" and country = \"B\") and country = \"C\"",
            "(country = \"A\" and country = \"B\") and country = \"C\"",
        ),
        (
            "(country = \"A\" and country = \"B\") or country = \"C\"",
            "country = \"A\" and country = \"B\" or country = \"C\"",
        ),
        (
            "not (country = \"A\" or ip = 1.2.3.4)",
            "not (country = \"A\" or ip = 1.2.3.4)",
        ),
        ("\tad_id\nstarts_with \"c:\" ", "ad_id starts_with \"c:\""),
    ] {
        let f = parse(input);
        assert_eq!(f.to_string(), canonical, "canonical form of {input:?}");
        assert_eq!(Filter::parse(canonical), Ok(f), "{canonical:?} parses back");
    }
}

#[test]
fn filter_from_str_is_parse() {
    let f: Filter = "ip = ::1".parse().expect("parses");
    assert_eq!(f, parse("ip = ::1"));
}

#[test]
fn each_error_names_its_position_and_what_was_expected() {
    for (text, message) in [
        (
            "",
            "at column 1 (byte offset 0): expected a field (country, ip, user_id, ad_id), \
             `not` or `(`, found end of input",
        ),
        (
            "colour = \"red\"",
            "at column 1 (byte offset 0): expected a field (country, ip, user_id, ad_id), \
             `not` or `(`, found `colour`",
        ),
        (
            "country \"USA\"",
            "at column 9 (byte offset 8): expected an operator for country \
             (=, !=, in, not in, starts_with), found the string \"USA\"",
        ),
        (
            "country = USA",
            "at column 11 (byte offset 10): expected a string literal in double quotes \
             (write \"USA\"), found `USA`",
        ),
        (
            "country = \"USA\" and",
            "at column 20 (byte offset 19): expected a field (country, ip, user_id, ad_id), \
             `not` or `(`, found end of input",
        ),
        (
            "country = \"USA\" user_id = \"x\"",
            "at column 17 (byte offset 16): expected `and`, `or` or end of input, \
             found `user_id`",
        ),
        (
            "(country = \"USA\"",
            "at column 17 (byte offset 16): expected `and`, `or` or `)` to close the `(` \
             at column 1, found end of input",
        ),
        (
            "country not \"USA\"",
            "at column 13 (byte offset 12): expected `in` after `not`, found the string \"USA\"",
        ),
        (
            "country in (\"USA\" \"CAN\")",
            "at column 19 (byte offset 18): expected `,` or `)` in the list, \
             found the string \"CAN\"",
        ),
        (
            "country in ()",
            "at column 13 (byte offset 12): expected a string literal in double quotes, \
             found `)`",
        ),
        (
            "country = \"USA",
            "at column 11 (byte offset 10): unterminated string literal: expected a \
             closing `\"`",
        ),
        (
            "country = \"U\\SA\"",
            "at column 13 (byte offset 12): unknown escape `\\S` in a string literal: only \
             `\\\"` and `\\\\` are allowed",
        ),
        (
            "country = 'USA'",
            "at column 11 (byte offset 10): string literals use double quotes (\"...\"), \
             not single quotes",
        ),
        (
            "country == \"USA\"",
            "at column 10 (byte offset 9): expected a string literal in double quotes, \
             found `=`",
        ),
        (
            "ip = \"1.2.3.4\"",
            "at column 6 (byte offset 5): expected an IP address (addresses are written \
             without quotes), found the string \"1.2.3.4\"",
        ),
        (
            "ip = 300.1.2.3",
            "at column 6 (byte offset 5): expected an IP address, found `300.1.2.3`",
        ),
        (
            "ip = 10.0.0.0/8",
            "at column 6 (byte offset 5): `=` and `!=` compare one address; for a network \
             write `ip in 10.0.0.0/8`",
        ),
        (
            "ip in 10.1.2.3/8",
            "at column 7 (byte offset 6): network 10.1.2.3/8 has host bits set: write \
             10.0.0.0/8 (or the address without a prefix)",
        ),
        (
            "ip in (10.0.0.0/8, ::ffff:1.2.3.4)",
            "at column 20 (byte offset 19): ::ffff:1.2.3.4 is IPv4-mapped, and clicks from \
             such addresses are matched as IPv4: write 1.2.3.4",
        ),
        (
            "ip in ::ffff:10.0.0.0/104",
            "at column 7 (byte offset 6): ::ffff:10.0.0.0/104 is IPv4-mapped, and clicks \
             from such addresses are matched as IPv4: write 10.0.0.0/8",
        ),
        (
            "ip in \"10.0.0.0/8\"",
            "at column 7 (byte offset 6): expected an IP address or network \
             (e.g. 10.0.0.0/8) or a parenthesised list of them (addresses are written \
             without quotes), found the string \"10.0.0.0/8\"",
        ),
    ] {
        assert_eq!(error(text), message, "error for {text:?}");
    }
}

#[test]
fn type_errors_are_parse_errors() {
    for (text, message) in [
        (
            "ip starts_with \"x\"",
            "at column 4 (byte offset 3): `starts_with` compares text and ip is an address: \
             use `ip in <network>`, e.g. ip in 10.0.0.0/8",
        ),
        (
            "country in 10.0.0.0/8",
            "at column 12 (byte offset 11): expected `(` opening a list of strings, e.g. \
             country in (\"a\", \"b\") (country holds text, not addresses), found `10.0.0.0/8`",
        ),
        (
            "country = 10.0.0.1",
            "at column 11 (byte offset 10): expected a string literal in double quotes \
             (country holds text, not addresses), found `10.0.0.1`",
        ),
        (
            "user_id in (\"a\", 1.2.3.4)",
            "at column 18 (byte offset 17): expected a string literal in double quotes \
             (user_id holds text, not addresses), found `1.2.3.4`",
        ),
        (
            "ad_id = \"ad 1\"",
            "at column 9 (byte offset 8): an ad_id is 1 to 64 bytes of [A-Za-z0-9_.:-]: \
             ad_id contains ' ', outside [A-Za-z0-9_.:-]",
        ),
        (
            "ad_id starts_with \"\"",
            "at column 19 (byte offset 18): an ad_id prefix is 1 to 64 bytes of \
             [A-Za-z0-9_.:-]: ad_id is required",
        ),
    ] {
        assert_eq!(error(text), message, "error for {text:?}");
    }
}

#[test]
fn multi_line_errors_name_the_line() {
    assert_eq!(
        error("country = \"USA\"\nand ip = x"),
        "at line 2, column 10 (byte offset 25): expected an IP address, found `x`"
    );
}

#[test]
fn text_longer_than_the_limit_is_refused() {
    let long = format!("country = \"{}\"", "a".repeat(MAX_FILTER_LEN));
    assert_eq!(
        error(&long),
        format!(
            "at column 4097 (byte offset 4096): filter is {} bytes, longer than the limit \
             of 4096",
            long.len()
        )
    );
    // Exactly at the limit is fine (whitespace pads it).
    let f = "country = \"a\"";
    let padded = format!("{f}{}", " ".repeat(MAX_FILTER_LEN - f.len()));
    assert_eq!(padded.len(), MAX_FILTER_LEN);
    assert_eq!(parse(&padded), parse(f));
}

#[test]
fn literals_longer_than_their_field_are_refused() {
    let country = format!("country = \"{}\"", "a".repeat(65));
    assert_eq!(
        error(&country),
        "at column 11 (byte offset 10): country values are at most 64 bytes; this one is 65"
    );
    let user = format!("user_id = \"{}\"", "a".repeat(129));
    assert!(error(&user).contains("user_id values are at most 128 bytes"));
    assert!(Filter::parse(&format!("user_id = \"{}\"", "a".repeat(128))).is_ok());
}

#[test]
fn filters_whose_canonical_form_outgrows_the_limit_are_refused() {
    // `::1,` grows to `::1, ` when printed: fill the input to the limit with distinct
    // addresses and the canonical form no longer fits.
    let mut text = String::from("ip in(::1");
    for i in 2u32.. {
        let next = format!(",::{i:x}");
        if text.len() + next.len() + 1 > MAX_FILTER_LEN {
            break;
        }
        text.push_str(&next);
    }
    text.push(')');
    let e = Filter::parse(&text).expect_err("canonical form too long");
    assert_eq!(e.offset(), 0);
    assert!(e.message().starts_with("filter's canonical form is"), "{e}");
}

#[test]
fn nesting_is_limited_to_32_levels() {
    let inner = "country = \"A\"";
    let ok = format!("{}{inner}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(parse(&ok), parse(inner));
    let deep = format!(
        "{}{inner}{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(
        error(&deep),
        "at column 33 (byte offset 32): filter nests deeper than 32 levels (each `(` and \
         `not` opens one)"
    );
    let nots = format!("{}{inner}", "not ".repeat(MAX_DEPTH));
    assert!(Filter::parse(&nots).is_ok());
    let nots = format!("{}{inner}", "not ".repeat(MAX_DEPTH + 1));
    assert!(error(&nots).contains("nests deeper than 32 levels"));
    // Siblings do not add up: depth is nesting, not count.
    let wide = vec![format!("({inner})"); 100].join(" and ");
    assert!(Filter::parse(&wide).is_ok());
}

#[test]
fn hostile_nesting_is_an_error_not_a_stack_overflow() {
    for text in [
        "(".repeat(1_000_000),
        "not ".repeat(1_000_000),
        format!("{}country = \"A\"", "(not ".repeat(1000)),
    ] {
        assert!(Filter::parse(&text).is_err());
    }
    let e = Filter::parse(&"(".repeat(MAX_FILTER_LEN)).expect_err("too deep");
    assert!(e.message().contains("nests deeper"), "{e}");
}

#[test]
fn lists_are_limited_to_1024_items() {
    // Empty strings: the shortest items, so 1025 of them fit in the length limit.
    let items = |n: usize| vec!["\"\""; n].join(",");
    assert!(Filter::parse(&format!("user_id in ({})", items(MAX_LIST_ITEMS))).is_ok());
    let text = format!("user_id in ({})", items(MAX_LIST_ITEMS + 1));
    let e = Filter::parse(&text).expect_err("too many items");
    assert_eq!(e.message(), "list has more than 1024 items");
    assert_eq!(e.offset(), "user_id in (".len() + 3 * MAX_LIST_ITEMS);
    let text = format!("ip in ({})", vec!["::"; MAX_LIST_ITEMS + 1].join(","));
    assert!(error(&text).contains("list has more than 1024 items"));
}

#[test]
fn errors_render_with_a_caret_for_the_terminal() {
    let text = "country = \"USA\" and ip in 10.0.0.0/33";
    let e = Filter::parse(text).expect_err("bad prefix length");
    assert_eq!(
        e.annotate(text),
        "country = \"USA\" and ip in 10.0.0.0/33\n                          ^ at column 27 \
         (byte offset 26): expected an IP address or network (e.g. 10.0.0.0/8) or a \
         parenthesised list of them, found `10.0.0.0/33`"
    );
}
