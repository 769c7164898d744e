//! Property tests: a streamed multipart body gives the verdict of the
//! whole body however it is cut; no bytes make any parser panic.

use proptest::prelude::*;

use super::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn presets() -> [FlagRules; 4] {
    [
        FlagRules::Drf,
        FlagRules::DjangoSendMessage,
        FlagRules::DjangoForm,
        table(FlagRule::PYTHON, FlagRule::DRF, true, true),
    ]
}

/// Multipart-looking bytes: boundaries, header lines, CRLFs and noise.
fn multipartish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(format!("--{BOUNDARY}").into_bytes()),
        Just(b"\r\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"Content-Disposition: form-data; name=generate_image".to_vec()),
        Just(b"Content-Disposition: form-data; name=f; filename=a.png".to_vec()),
        Just(b"Content-Transfer-Encoding: base64".to_vec()),
        Just(b"true".to_vec()),
        Just(b"dHJ1ZQ==".to_vec()),
        Just(b"--".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
        (0usize..70_000).prop_map(|n| vec![b'x'; n]),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// However the body is cut, the streamed verdict is the whole one.
    #[test]
    fn streamed_multipart_equals_whole(body in multipartish(), cuts in proptest::collection::vec(1usize..100_000, 1..12)) {
        let body = Bytes::from(body);
        for rules in presets() {
            let whole = detect(Some(MULTIPART), body.clone(), None, FLAG, &rules);
            let streamed = block_on(detect_stream(Some(MULTIPART), Trickle::cut(&body, cuts.clone()), None, FLAG, &rules));
            prop_assert_eq!(streamed, whole);
        }
    }

    /// No bytes make any parser panic.
    #[test]
    fn no_panic_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..600), ct in 0usize..6) {
        let types = [Some(JSON), Some(FORM), Some(MULTIPART), Some("text/plain"), None, Some("*/*")];
        let body = Bytes::from(body);
        for rules in presets() {
            let _ = detect(types[ct], body.clone(), Some("generate_image=1"), FLAG, &rules);
        }
    }

    /// No JSON-looking bytes make the JSON reader panic.
    #[test]
    fn no_panic_on_jsonish(body in "[\\[\\]{}\":,0-9eE.+\\-a-zNIT\\\\u \t\r\n\u{e9}\u{d7ff}]{0,80}") {
        for rules in presets() {
            let _ = detect(Some(JSON), Bytes::from(body.clone()), None, FLAG, &rules);
        }
    }
}
