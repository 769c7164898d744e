//! A JWT's signature as PyJWT reads it (djangorestframework-simplejwt
//! verifies with PyJWT): CPython's lenient base64 ([`crate::pybase64`]),
//! so that a token Django accepts is accepted here, spelled however PyJWT
//! lets it be spelled.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::pybase64::A2bBase64;

/// `token` with its signature segment (after the last `.`) written as
/// `jsonwebtoken` reads one, unpadded canonical base64url, holding the bytes
/// PyJWT reads from it (djangorestframework-simplejwt verifies with PyJWT):
/// `base64url_decode` pads the segment to a multiple of four with `=` and
/// runs `base64.urlsafe_b64decode`, CPython's lenient `a2b_base64`, which
/// takes both alphabets, skips other characters, stops at a completed
/// padding and drops the unsigned bits of a last character. So `<jwt>=`
/// (PyJWT 2.15), `<jwt>!!` or another last character (PyJWT 2.8) verify in
/// Django; read strictly here they were no identity, and a request with one
/// went on anonymous and unchecked (`tests/it/attack_identity.rs`). The signed
/// header and payload are left as they are. `token` itself when its
/// signature is canonical already, or is one PyJWT cannot read either.
pub(super) fn pyjwt_signature(token: &str) -> Cow<'_, str> {
    let Some((signed, signature)) = token.rsplit_once('.') else {
        return Cow::Borrowed(token);
    };
    let pad = (4 - signature.len() % 4) % 4;
    let mut decoder = A2bBase64::url_safe();
    let mut bytes = Vec::with_capacity(signature.len() / 4 * 3 + 3);
    decoder.feed(signature.as_bytes(), &mut bytes);
    decoder.feed(&b"==="[..pad], &mut bytes);
    if !decoder.ok() {
        return Cow::Borrowed(token);
    }
    let canonical = URL_SAFE_NO_PAD.encode(&bytes);
    if canonical == signature {
        Cow::Borrowed(token)
    } else {
        Cow::Owned(format!("{signed}.{canonical}"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::pybase64::urlsafe_b64decode;

    #[test]
    fn signatures_are_read_as_pyjwt_reads_them() {
        let token = "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJlIQ";
        assert_eq!(pyjwt_signature(token), token, "canonical: as it is");
        for spelled in [
            "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJlIQ=",
            "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJlIQ==",
            "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJlIR",
            "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJlIQ!!!",
            "aGVhZA.cGF5bG9hZA.c2ln!\u{a0}bmF0dXJlIQ",
            "aGVhZA.cGF5bG9hZA.c2lnbmF0dXJlIQ==trailing",
        ] {
            assert_eq!(pyjwt_signature(spelled), token, "{spelled}");
        }
        // The other alphabet: `+` and `/` are `-` and `_`.
        assert_eq!(pyjwt_signature("h.p.-_8"), "h.p.-_8");
        assert_eq!(pyjwt_signature("h.p.+/8"), "h.p.-_8");
        // What Python cannot decode stays (and fails verification).
        // (Padded to a multiple of four first: one junk character leaves the
        // last quad short.)
        for bad in ["h.p.c2lnb", "h.p.c2lnbm!", "h.p.c2lnbmF0dXJlIQ!", "no dots"] {
            assert_eq!(pyjwt_signature(bad), bad, "{bad}");
        }
    }

    proptest! {
        /// Any bytes written canonically read back as themselves, padded
        /// or not, and junk CPython skips (any byte outside both alphabets
        /// and `=`) changes nothing wherever it goes.
        #[test]
        fn canonical_base64_reads_back_whatever_junk_is_in_it(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            junk in proptest::collection::vec((any::<prop::sample::Index>(), b'!'..=b'*'), 0..4),
        ) {
            let canonical = URL_SAFE_NO_PAD.encode(&bytes);
            let mut spelled = canonical.clone().into_bytes();
            spelled.extend(std::iter::repeat_n(b'=', (4 - canonical.len() % 4) % 4));
            for (at, byte) in junk {
                spelled.insert(at.index(spelled.len() + 1), byte);
            }
            prop_assert_eq!(urlsafe_b64decode(&spelled), Some(bytes.clone()));
            let token = format!("h.p.{canonical}");
            prop_assert_eq!(pyjwt_signature(&token), token.as_str());
        }
    }
}
