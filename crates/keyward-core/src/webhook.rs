//! Webhooks (SPEC §10): which events exist, which URLs may receive them,
//! and the Standard Webhooks signature.
//!
//! An event *is* an audit record whose action is one of [`EVENTS`]: storage
//! queues it for every endpoint subscribed to it in the transaction that
//! appends the record, so an event exists exactly when its change does. The
//! payload is drawn from the record at delivery, so every retry sends the
//! same bytes.
//!
//! No IO here: the caller resolves names and checks each address with
//! [`is_public`], both when an endpoint is created and when it is dialled (a
//! name may resolve elsewhere by then).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every event an endpoint may subscribe to, in the SPEC's order.
pub const EVENTS: [&str; 9] = [
    "key.created",
    "key.rolled",
    "key.revoked",
    "key.expiring",
    "key.expired",
    "key.unused",
    "key.leaked",
    "catalog.published",
    "catalog.scope_available",
];

/// Whether an audit action is an event delivered to webhooks.
pub fn is_event(action: &str) -> bool {
    EVENTS.contains(&action)
}

/// The subscription list as given, deduplicated in its order; or the names
/// that are not events (all of them, for one message).
///
/// # Errors
/// The unknown names. An empty list is the caller's to refuse.
pub fn check_events(names: &[String]) -> Result<Vec<&'static str>, Vec<String>> {
    let mut known: Vec<&'static str> = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for n in names {
        match EVENTS.iter().find(|e| **e == n.as_str()) {
            Some(e) if !known.contains(e) => known.push(e),
            Some(_) => {}
            None => unknown.push(n.clone()),
        }
    }
    if unknown.is_empty() {
        Ok(known)
    } else {
        Err(unknown)
    }
}

/// Longest URL accepted: receivers are endpoints, not data carriers.
pub const MAX_URL_LEN: usize = 2_000;

/// A receiving URL, checked for shape: where to dial and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `https`: TLS to `host`.
    pub https: bool,
    /// Lower-case name or IP literal (without brackets).
    pub host: String,
    /// The port to dial (the scheme's default when none is given).
    pub port: u16,
    /// `/path?query`, at least `/`.
    pub path_and_query: String,
    /// The literal address, when `host` is one.
    pub ip: Option<IpAddr>,
}

/// Why a URL cannot receive webhooks; the message names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not `http://` or `https://`.
    #[error("must be an http:// or https:// URL")]
    Scheme,
    /// `user:password@` in the authority.
    #[error("must not carry credentials (user:password@)")]
    Credentials,
    /// Whitespace, control or non-ASCII characters, a fragment, or too long.
    #[error("{0}")]
    Malformed(&'static str),
    /// Resolves, or is, a loopback, private, link-local or otherwise
    /// non-public address.
    #[error(
        "points to a non-public address ({0}); start the server with --allow-private-webhooks to allow it"
    )]
    Private(IpAddr),
}

/// Checks a URL's shape (not where its name resolves).
///
/// # Errors
/// The first rule it breaks.
pub fn check_url(url: &str) -> Result<WebhookUrl, UrlProblem> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlProblem::Malformed("is longer than 2000 characters"));
    }
    if url.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(UrlProblem::Malformed(
            "must be ASCII without spaces or control characters (write an international name in its xn-- form)",
        ));
    }
    let (https, rest) = if let Some(r) = strip_prefix_ci(url, "https://") {
        (true, r)
    } else if let Some(r) = strip_prefix_ci(url, "http://") {
        (false, r)
    } else {
        return Err(UrlProblem::Scheme);
    };
    if rest.contains('#') {
        return Err(UrlProblem::Malformed("must not have a #fragment"));
    }
    if rest.contains('\\') {
        return Err(UrlProblem::Malformed("must not contain a backslash"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(UrlProblem::Credentials);
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => p,
    };
    let ip = host_ip(&host)?;
    let path_and_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        ["/", tail].concat()
    };
    Ok(WebhookUrl {
        https,
        host,
        port,
        path_and_query,
        ip,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(authority: &str) -> Result<(String, Option<u16>), UrlProblem> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or(UrlProblem::Malformed("has an unclosed [ in its host"))?;
        let after = &rest[close + 1..];
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(UrlProblem::Malformed("has text after its [address]"))?,
            ),
        };
        (format!("[{}]", &rest[..close]), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(UrlProblem::Malformed("has an invalid port")),
        },
    };
    if host.is_empty() || host == "[]" {
        return Err(UrlProblem::Malformed("has no host"));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// The literal address a host names, if it is one; refuses the numeric
/// spellings resolvers accept but humans do not read as addresses
/// (`2130706433`, `0x7f.1`, `127.1`): they are how filters get bypassed.
fn host_ip(host: &str) -> Result<Option<IpAddr>, UrlProblem> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(Some(IpAddr::V6(ip))),
            Err(_) => Err(UrlProblem::Malformed("has an invalid [IPv6] host")),
        };
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Some(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || name.split('.').any(|l| {
            l.len() > 2 && l.as_bytes()[0] == b'0' && matches!(l.as_bytes()[1], b'x' | b'X')
        });
    if numeric || last.is_empty() {
        return Err(UrlProblem::Malformed(
            "has a host that is neither a name nor a dotted-quad or [IPv6] address",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        || name.split('.').any(str::is_empty)
    {
        return Err(UrlProblem::Malformed("has an invalid host name"));
    }
    Ok(None)
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// documentation or reserved; an IPv4 address inside IPv6 (mapped,
/// compatible, NAT64, 6to4) is judged by the IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96 reaches the IPv4 address it
    // carries (the local-use 64:ff9b:1::/48 is not public).
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    // 6to4 2002::/16 carries an IPv4 address in its next 32 bits.
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    // Only global unicast (2000::/3) is public; everything else (::,
    // ::1, the IPv4-compatible and translated forms, unique local,
    // link-local, site-local, multicast, SRv6 5f00::/16, …) is not. Within
    // it: documentation (2001:db8::/32, 3fff::/20) and the IETF protocol
    // assignments 2001::/23 (Teredo, ORCHID, benchmarking).
    (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && !(s[0] == 0x2001 && s[1] < 0x0200)
        && (s[0] & 0xfff0) != 0x3ff0
}

/// The secret's text prefix, as Standard Webhooks libraries expect it.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing secret's text from 24 random bytes: `whsec_` and their base64.
pub fn secret_text(random: &[u8; 24]) -> String {
    [SECRET_PREFIX, &STANDARD.encode(random)].concat()
}

/// The key bytes a secret's text stands for; `None` when it is not one.
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of
/// `id.timestamp.body` under `key`.
pub fn sign(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    ["v1,", &STANDARD.encode(mac.finalize().into_bytes())].concat()
}

/// The first retry's delay; each further failure doubles it.
pub const FIRST_RETRY_MS: i64 = 5_000;

/// The longest delay between attempts.
pub const MAX_RETRY_MS: i64 = 3_600_000;

/// An endpoint failing this long is disabled.
pub const DISABLE_AFTER_MS: i64 = 24 * 3_600_000;

/// Delay before the next attempt after `failures` consecutive failures
/// (from 1): 5 s, 10 s, 20 s, … up to an hour, so an endpoint failing for
/// a day is tried about thirty times before it is disabled.
pub fn retry_delay_ms(failures: i64) -> i64 {
    let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    FIRST_RETRY_MS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_RETRY_MS)
}

/// The `webhook-id` of the event an audit record is: stable across retries
/// and unique in the deployment, as receivers deduplicate on it.
pub fn message_id(audit_seq: i64) -> String {
    format!("msg_{audit_seq}")
}

#[cfg(test)]
mod tests;
