//! Time as the backends store it: whole milliseconds since the Unix epoch. Send
//! times are kept at millisecond precision everywhere, so a message read back
//! from any store equals the one that was delivered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch; a clock set before 1970 reads as 0.
pub(crate) fn millis_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn time_of(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

pub(crate) fn now_millis() -> u64 {
    millis_of(SystemTime::now())
}
