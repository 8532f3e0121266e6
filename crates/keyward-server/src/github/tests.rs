#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use super::*;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32].into()).unwrap()
}

fn file(keys: &[(&str, &SigningKey)]) -> String {
    let listed: Vec<serde_json::Value> = keys
        .iter()
        .map(|(id, k)| {
            serde_json::json!({
                "key_identifier": id,
                "key": k.verifying_key().to_public_key_pem(Default::default()).unwrap(),
                "is_current": true,
            })
        })
        .collect();
    serde_json::json!({ "public_keys": listed }).to_string()
}

fn sign(k: &SigningKey, body: &[u8]) -> String {
    let sig: p256::ecdsa::Signature = k.sign(body);
    STANDARD.encode(sig.to_der().as_bytes())
}

#[test]
fn a_report_signed_by_a_published_key_verifies_and_nothing_else_does() {
    let (current, old, stranger) = (signer(7), signer(9), signer(11));
    let keys = GithubKeys::parse(&file(&[("cur", &current), ("old", &old)])).unwrap();
    let body =
        br#"[{"token":"x","type":"keyward","url":"https://github.com/a/b","source":"content"}]"#;
    let good = sign(&current, body);
    assert_eq!(keys.verify(Some("cur"), Some(&good), body), Ok(()));
    assert_eq!(
        keys.verify(Some("old"), Some(&sign(&old, body)), body),
        Ok(())
    );
    // Another key's identifier, a stranger's signature, a changed body.
    assert_eq!(
        keys.verify(Some("old"), Some(&good), body),
        Err(Unsigned::Invalid)
    );
    assert_eq!(
        keys.verify(Some("cur"), Some(&sign(&stranger, body)), body),
        Err(Unsigned::Invalid)
    );
    let mut tampered = body.to_vec();
    tampered[3] ^= 1;
    assert_eq!(
        keys.verify(Some("cur"), Some(&good), &tampered),
        Err(Unsigned::Invalid)
    );
    // Missing, unknown, not base64, not DER.
    assert_eq!(
        keys.verify(None, Some(&good), body),
        Err(Unsigned::Missing("Github-Public-Key-Identifier"))
    );
    assert_eq!(
        keys.verify(Some("cur"), None, body),
        Err(Unsigned::Missing("Github-Public-Key-Signature"))
    );
    assert_eq!(
        keys.verify(Some("nope"), Some(&good), body),
        Err(Unsigned::UnknownKey)
    );
    assert_eq!(
        keys.verify(Some("cur"), Some("!!!"), body),
        Err(Unsigned::Malformed)
    );
    assert_eq!(
        keys.verify(Some("cur"), Some(&STANDARD.encode(b"not der at all")), body),
        Err(Unsigned::Malformed)
    );
}

#[test]
fn bad_key_files_are_refused_naming_the_key() {
    assert!(
        GithubKeys::parse("{}")
            .unwrap_err()
            .contains("not GitHub's")
    );
    assert!(
        GithubKeys::parse(r#"{"public_keys": []}"#)
            .unwrap_err()
            .contains("no key")
    );
    let e = GithubKeys::parse(
        r#"{"public_keys": [{"key_identifier": "k1", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "is_current": true}]}"#,
    )
    .unwrap_err();
    assert!(e.contains("`k1`"), "{e}");
}
