//! GitHub secret scanning (SPEC §11): the keys GitHub signs its reports
//! with, and the check of a report's signature. A report is believed only
//! when `Github-Public-Key-Signature` (base64 of a DER ECDSA P-256 /
//! SHA-256 signature) verifies over the raw body with the key that
//! `Github-Public-Key-Identifier` names in the key file GitHub publishes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use std::collections::HashMap;

/// GitHub's published key file: `{"public_keys": [{"key_identifier",
/// "key" (PEM), "is_current"}]}`.
#[derive(Deserialize)]
struct KeyFile {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

/// The verifying keys by identifier.
#[derive(Clone, Debug, Default)]
pub(crate) struct GithubKeys {
    keys: HashMap<String, VerifyingKey>,
}

/// Why a report is not believed (each a 401; the words are for the log and
/// the error message, never holding the body).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsigned {
    /// A header is missing.
    #[error("the report has no `{0}` header")]
    Missing(&'static str),
    /// The identifier names no key of the file.
    #[error("`Github-Public-Key-Identifier` names no key GitHub published")]
    UnknownKey,
    /// The signature is not base64, or not DER.
    #[error("`Github-Public-Key-Signature` is not a base64 DER ECDSA signature")]
    Malformed,
    /// It does not verify over the body.
    #[error("the signature does not verify over the body")]
    Invalid,
}

impl GithubKeys {
    /// The keys of a key file's text.
    ///
    /// # Errors
    /// What is wrong with the file, naming the key that is.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_str(text)
            .map_err(|e| format!("not GitHub's public key document: {e}"))?;
        let mut keys = HashMap::with_capacity(file.public_keys.len());
        for k in file.public_keys {
            let key = VerifyingKey::from_public_key_pem(&k.key).map_err(|e| {
                format!(
                    "key `{}` is not a PEM ECDSA P-256 public key: {e}",
                    k.key_identifier
                )
            })?;
            keys.insert(k.key_identifier, key);
        }
        if keys.is_empty() {
            return Err("the document lists no key".into());
        }
        Ok(GithubKeys { keys })
    }

    /// Whether `body` is signed by the key `identifier` names.
    ///
    /// # Errors
    /// [`Unsigned`], saying why not.
    pub(crate) fn verify(
        &self,
        identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Unsigned> {
        let identifier = identifier.ok_or(Unsigned::Missing("Github-Public-Key-Identifier"))?;
        let signature = signature.ok_or(Unsigned::Missing("Github-Public-Key-Signature"))?;
        let key = self.keys.get(identifier).ok_or(Unsigned::UnknownKey)?;
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| Unsigned::Malformed)?;
        let signature = DerSignature::try_from(der.as_slice()).map_err(|_| Unsigned::Malformed)?;
        key.verify(body, &signature).map_err(|_| Unsigned::Invalid)
    }
}

#[cfg(test)]
mod tests;
