//! The nats-server version check: this node uses JetStream features of
//! server 2.10 (stream and consumer settings an older server's API does
//! not answer in the shape the client expects: 2.9.10 fails stream setup
//! with "data did not match any variant of untagged enum Response"), so an
//! older server is refused with the version found, the minimum and the
//! fix, before any stream or bucket is created.

use crate::bus::BusError;

/// A server version, `major.minor.patch`.
pub type Version = (u64, u64, u64);

/// The oldest nats-server this node supports.
pub const MINIMUM: Version = (2, 10, 0);

/// How to get a supported server, said in every refusal.
pub const FIX: &str = "run deploy/setup.sh (installs nats-server 2.15.1) or set NATS_SERVER_BIN to a nats-server 2.10 or newer";

/// The first `[v]MAJOR.MINOR.PATCH` in `text` (`nats-server --version`
/// prints `nats-server: v2.15.1`; INFO carries `2.15.1`); a pre-release
/// or build suffix (`-beta.1`, `+abc`) is ignored.
pub fn parse(text: &str) -> Option<Version> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == ',').find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let core = word.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some((major.parse().ok()?, minor.parse().ok()?, patch.parse().ok()?))
    })
}

/// Refuse `found` (a version text read from `origin`) when it is older
/// than [`MINIMUM`] or has no version in it.
pub fn check(found: &str, origin: &str) -> Result<Version, BusError> {
    let too_old = |found: &str| BusError::ServerTooOld { found: found.to_string(), minimum: format!("{}.{}.{}", MINIMUM.0, MINIMUM.1, MINIMUM.2), origin: origin.to_string() };
    match parse(found) {
        Some(version) if version >= MINIMUM => Ok(version),
        Some((major, minor, patch)) => Err(too_old(&format!("{major}.{minor}.{patch}"))),
        None => Err(too_old(if found.trim().is_empty() { "none reported" } else { found.trim() })),
    }
}

/// Check the server `client` is connected to (its INFO `version`). Waits
/// for the first connection so INFO has been read.
pub async fn check_client(client: &async_nats::Client) -> Result<Version, BusError> {
    client.flush().await.map_err(|e| BusError::Connect { url: "(server info)".to_string(), detail: e.to_string() })?;
    check(&client.server_info().version, "the connected server's INFO")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_servers_print() {
        assert_eq!(parse("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse("nats-server: v2.9.10\n"), Some((2, 9, 10)));
        assert_eq!(parse("2.10.0"), Some((2, 10, 0)));
        assert_eq!(parse("v2.11.0-beta.2"), Some((2, 11, 0)));
        assert_eq!(parse("2.12.3+git"), Some((2, 12, 3)));
        assert_eq!(parse("nats-server"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("v2.10"), None, "three parts or none");
        assert_eq!(parse("1.2.3.4"), None);
    }

    #[test]
    fn versions_compare_numerically_not_as_text() {
        assert!(check("nats-server: v2.9.10", "t").is_err(), "2.9.10 < 2.10.0 although \"2.9\" > \"2.1\" as text");
        assert_eq!(check("nats-server: v2.10.0", "t").ok(), Some((2, 10, 0)));
        assert_eq!(check("v2.15.1", "t").ok(), Some((2, 15, 1)));
        assert!(check("v3.0.0", "t").is_ok());
    }

    #[test]
    fn the_refusal_names_found_minimum_and_fix() {
        let e = check("nats-server: v2.9.10", "/usr/sbin/nats-server --version").unwrap_err();
        assert_eq!(e.code(), "nats_server_too_old");
        let text = e.to_string();
        for part in ["2.9.10", "2.10.0", "deploy/setup.sh", "NATS_SERVER_BIN", "/usr/sbin/nats-server"] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        assert!(check("", "INFO").unwrap_err().to_string().contains("none reported"));
    }

    #[test]
    fn a_server_info_is_checked_by_its_version_field() {
        let old: async_nats::ServerInfo = serde_json::from_str(r#"{"server_id":"x","server_name":"x","host":"127.0.0.1","port":4222,"version":"2.9.10","headers":true,"max_payload":1048576,"proto":1}"#).unwrap();
        assert!(check(&old.version, "INFO").is_err());
        let new: async_nats::ServerInfo = serde_json::from_str(r#"{"server_id":"x","server_name":"x","host":"127.0.0.1","port":4222,"version":"2.15.1","headers":true,"max_payload":1048576,"proto":1}"#).unwrap();
        assert_eq!(check(&new.version, "INFO").ok(), Some((2, 15, 1)));
    }
}
