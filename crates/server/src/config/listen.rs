//! Listening and HTTP: the address, and the keep-alive and client timeout,
//! which must agree with each other.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, Values, bad};

pub(super) fn address(v: &Values) -> Result<SocketAddr, ConfigError> {
    v.listen
        .parse()
        .map_err(|_| bad("listen", format!("'{}' is not ADDR:PORT, e.g. 0.0.0.0:5000", v.listen)))
}

/// The Ping interval and the silence after which a client is dropped: the
/// client must get at least one Ping before it would be dropped.
pub(super) fn keep_alive_and_timeout(v: &Values) -> Result<(Duration, Duration), ConfigError> {
    if v.client_timeout_secs <= v.keep_alive_secs {
        return Err(bad("client_timeout_secs", "must be longer than keep_alive_secs"));
    }
    Ok((Duration::from_secs(v.keep_alive_secs), Duration::from_secs(v.client_timeout_secs)))
}
