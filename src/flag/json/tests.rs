//! Tests of the JSON flag scanner: Python `json.loads` and DRF behaviour
//! pinned case by case (properties and the Django tables are in
//! `flag/tests/`).

use super::*;

/// The value of `flag` in the JSON object `body`, as `json.loads` reads it.
fn flag_of(body: &str, flag: &str, cap: usize) -> Option<Owned> {
    match parse(body.as_bytes(), Decoding::Loads, flag, cap) {
        Ok(TopLevel::Object(value)) => value,
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn a_string_of_the_cap_is_kept_and_one_byte_more_is_other_text() {
    let kept = |s: &str| Some(Owned::Str(s.to_owned()));
    assert_eq!(flag_of(r#"{"f": "abc"}"#, "f", 3), kept("abc"));
    assert_eq!(flag_of(r#"{"f": "abcd"}"#, "f", 3), Some(Owned::OtherText));
    // The cap is in UTF-8 bytes: three two-byte letters are six.
    assert_eq!(flag_of(r#"{"f": "ééé"}"#, "f", 6), kept("ééé"));
    assert_eq!(flag_of(r#"{"f": "ééé"}"#, "f", 5), Some(Owned::OtherText));
}

#[test]
fn escapes_and_utf8_in_one_string_decode_as_json_loads_does() {
    // A string with an escape is decoded character by character:
    // every simple escape, then a 2-, 3- and 4-byte UTF-8 character.
    // CPython 3.11 `json.loads` gives '" \\ / \x08 \x0c \n \r \t é € 😀'.
    assert_eq!(
        flag_of(r#"{"f": "\" \\ \/ \b \f \n \r \t é € 😀"}"#, "f", 100),
        Some(Owned::Str("\" \\ / \u{8} \u{c} \n \r \t é € 😀".to_owned()))
    );
}

#[test]
fn a_surrogate_pair_of_escapes_is_one_character() {
    // CPython 3.11 `json.loads`: '😀'; a high surrogate without its low
    // half stays a lone surrogate, which no Rust `String` holds: any
    // text, true and equal to no listed string, as Python's would be.
    assert_eq!(
        flag_of(r#"{"f": "\ud83d\ude00"}"#, "f", 100),
        Some(Owned::Str("😀".to_owned()))
    );
    assert_eq!(
        flag_of(r#"{"f": "x\ud83d\ude00y"}"#, "f", 100),
        Some(Owned::Str("x😀y".to_owned()))
    );
    assert_eq!(
        flag_of(r#"{"f": "\ud83dA"}"#, "f", 100),
        Some(Owned::OtherText)
    );
}

#[test]
fn a_raw_control_character_in_a_string_is_refused() {
    // CPython 3.11 `json.loads` (strict): "Invalid control character"
    // for each; three bytes follow the control character, so reading it
    // as a UTF-8 lead byte would end the string where it ends.
    for body in [
        "{\"f\": \"a\u{1}bcd\"}",
        "{\"f\": \"a\tbcd\"}",
        "{\"a\u{1f}xyz\": 1, \"f\": 2}",
        // In strings only skipped (not the flag): the same.
        "{\"m\": \"a\u{1}bcd\", \"f\": true}",
        "{\"m\": {\"n\": [\"é\nb\"]}, \"f\": true}",
    ] {
        let parsed = parse(body.as_bytes(), Decoding::Loads, "f", 100);
        assert!(parsed.is_err(), "{body:?}: {parsed:?}");
    }
    // DEL is no control character to `json`.
    assert_eq!(
        flag_of("{\"f\": \"a\u{7f}b\"}", "f", 100),
        Some(Owned::Str("a\u{7f}b".to_owned()))
    );
}

#[test]
fn a_skipped_string_ends_at_its_first_unescaped_quote() {
    // Escaped quotes and backslashes, and multi-byte text, inside strings
    // that are skipped rather than collected.
    for body in [
        r#"{"m": "say \"f\": false", "f": true}"#,
        r#"{"m": "ends in \\", "f": true}"#,
        r#"{"m": ["d\u00e9j\u00e0 \ud83d\ude00", "ای"], "f": true}"#,
    ] {
        assert_eq!(flag_of(body, "f", 100), Some(Owned::Bool(true)), "{body}");
    }
    assert!(
        parse(
            br#"{"m": "no end \", "f": true}"#,
            Decoding::Loads,
            "f",
            100
        )
        .is_err()
    );
}

#[test]
fn a_flag_name_outside_ascii_is_found() {
    // Keys are collected up to the flag's length in bytes; Python's
    // `data.get("ééé")` finds the first key, not the longer one.
    assert_eq!(
        flag_of(r#"{"ééé": 1, "éééé": 2}"#, "ééé", 100),
        Some(Owned::Number(1.0))
    );
}
