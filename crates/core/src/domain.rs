//! The values the chat rules talk about. Each newtype validates on construction,
//! so a `GroupId` that exists is already valid and no caller re-checks it.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::ChatError;

/// Limits on what clients may send. Every one is configurable; the defaults are
/// the contract's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest group id, in characters (Unicode scalar values).
    pub group_id_max_chars: usize,
    /// Longest message text, in characters.
    pub text_max_chars: usize,
    /// Longest user id, in characters.
    pub user_id_max_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            group_id_max_chars: crate::defaults::GROUP_ID_MAX_CHARS,
            text_max_chars: crate::defaults::TEXT_MAX_CHARS,
            user_id_max_chars: 64,
        }
    }
}

fn check_chars(
    field: &'static str,
    value: &str,
    max: usize,
    allow_control: bool,
) -> Result<(), ChatError> {
    let count = value.chars().count();
    if count == 0 {
        return Err(ChatError::invalid(
            field,
            format!("{field} must not be empty (1 to {max} characters)"),
        ));
    }
    if count > max {
        return Err(ChatError::invalid(
            field,
            format!("{field} is {count} characters long; the limit is {max}"),
        ));
    }
    if !allow_control && value.chars().any(char::is_control) {
        return Err(ChatError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

/// The rules every identifier (user id, group id) follows beyond its length:
/// no control characters, no format characters and not blank. Format
/// characters (General Category Cf: zero-width space and joiners, bidi controls
/// such as U+202E, the BOM, the soft hyphen) are invisible or reorder what is
/// shown, so two ids that look the same could differ, or one could look like
/// another.
fn check_identifier(field: &'static str, value: &str, max: usize) -> Result<(), ChatError> {
    check_chars(field, value, max, false)?;
    if let Some((position, c)) =
        // No ASCII character is a format character: most ids skip the table.
        value
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii() && c.general_category() == GeneralCategory::Format)
    {
        return Err(ChatError::invalid(
            field,
            format!(
                "{field} must not contain format characters (Unicode category Cf: zero-width, \
                 bidi controls and the like); U+{:04X} is character {}",
                u32::from(c),
                position + 1
            ),
        ));
    }
    if value.trim().is_empty() {
        return Err(ChatError::invalid(
            field,
            format!("{field} must not be blank (only whitespace)"),
        ));
    }
    Ok(())
}

/// A group's name: 1 to 64 characters, not blank, no control or format characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(Arc<str>);

impl GroupId {
    pub fn parse(value: &str, limits: &Limits) -> Result<GroupId, ChatError> {
        check_identifier("groupId", value, limits.group_id_max_chars)?;
        Ok(GroupId(value.into()))
    }

    /// For values that come back from our own storage, which only ever holds
    /// ids that passed `parse`.
    pub fn from_trusted(value: &str) -> GroupId {
        GroupId(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a connection belongs to: 1 to 64 characters, not blank, no control or
/// format characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(value: &str, limits: &Limits) -> Result<UserId, ChatError> {
        check_identifier("user id", value, limits.user_id_max_chars)?;
        Ok(UserId(value.into()))
    }

    pub fn from_trusted(value: &str) -> UserId {
        UserId(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a message: 1 to 16384 characters. Control characters such as
/// newlines are allowed: people paste code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(Arc<str>);

impl MessageText {
    pub fn parse(value: &str, limits: &Limits) -> Result<MessageText, ChatError> {
        check_chars("text", value, limits.text_max_chars, true)?;
        Ok(MessageText(value.into()))
    }

    pub fn from_trusted(value: &str) -> MessageText {
        MessageText(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Identifies one connection across every server instance (the instance id is
/// part of it), so membership can count a user's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(Arc<str>);

impl ConnectionId {
    pub fn new(value: &str) -> ConnectionId {
        ConnectionId(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message id as Redis Streams writes them, `<milliseconds>-<sequence>`. The
/// embedded messaging uses the same form, so ids compare the same way in both
/// modes: by time, then by sequence. Clients treat the text as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub millis: u64,
    pub seq: u64,
}

impl MessageId {
    pub const MIN: MessageId = MessageId { millis: 0, seq: 0 };
    pub const MAX: MessageId = MessageId { millis: u64::MAX, seq: u64::MAX };

    pub fn new(millis: u64, seq: u64) -> MessageId {
        MessageId { millis, seq }
    }
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.millis, self.seq).cmp(&(other.millis, other.seq))
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.seq)
    }
}

impl FromStr for MessageId {
    type Err = ChatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ChatError::invalid("before", format!("'{s}' is not a message id"));
        let (millis, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(millis) || !digits(seq) {
            return Err(bad());
        }
        Ok(MessageId {
            millis: millis.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A message before the messaging backend has given it an id and a time.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub author: UserId,
    pub group: GroupId,
    pub text: MessageText,
}

/// An accepted message, as every member receives it and history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub author: UserId,
    pub group: GroupId,
    /// The server's UTC time when it accepted the message.
    pub send_time: SystemTime,
    pub text: MessageText,
}

/// The answer to `JoinGroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    /// The group already holds its maximum of distinct users.
    NoRoom,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_id_counts_characters_not_bytes() {
        let limits = Limits::default();
        let ok = "é".repeat(64);
        assert!(GroupId::parse(&ok, &limits).is_ok());
        let err = GroupId::parse(&"é".repeat(65), &limits).unwrap_err();
        assert_eq!(err.to_string(), "groupId is 65 characters long; the limit is 64");
    }

    #[test]
    fn group_id_rejects_empty_blank_and_control() {
        let limits = Limits::default();
        assert!(GroupId::parse("", &limits).unwrap_err().to_string().contains("1 to 64"));
        assert!(GroupId::parse("   ", &limits).unwrap_err().to_string().contains("blank"));
        assert!(GroupId::parse("a\nb", &limits).unwrap_err().to_string().contains("control"));
    }

    #[test]
    fn identifiers_reject_format_characters_and_blank_values() {
        let limits = Limits::default();
        let format = [
            "a\u{200B}b",
            "a\u{200C}",
            "\u{200D}",
            "\u{202E}abc",
            "a\u{2066}b\u{2069}",
            "\u{FEFF}a",
            "soft\u{AD}hyphen",
            "a\u{2060}",
            "\u{E0001}tag",
        ];
        for value in format {
            let err = GroupId::parse(value, &limits).unwrap_err().to_string();
            assert!(
                err.starts_with("groupId must not contain format characters"),
                "{value:?}: {err}"
            );
            let err = UserId::parse(value, &limits).unwrap_err().to_string();
            assert!(
                err.starts_with("user id must not contain format characters"),
                "{value:?}: {err}"
            );
        }
        let err = UserId::parse("\u{202E}x", &limits).unwrap_err().to_string();
        assert!(err.ends_with("U+202E is character 1"), "{err}");
        for blank in [" ", "   ", "\u{3000}", "\u{2003}\u{00A0}"] {
            let err = UserId::parse(blank, &limits).unwrap_err().to_string();
            assert_eq!(err, "user id must not be blank (only whitespace)");
            assert!(GroupId::parse(blank, &limits).unwrap_err().to_string().contains("blank"));
        }
        // Visible non-ASCII stays allowed: names in any script, emoji with a
        // variation selector (category Mn, not Cf).
        for ok in ["Zoë", "日本語", "👩💻", "❤\u{FE0F}"] {
            assert!(UserId::parse(ok, &limits).is_ok(), "{ok:?}");
            assert!(GroupId::parse(ok, &limits).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn text_allows_newlines_and_limits_length() {
        let limits = Limits::default();
        assert!(MessageText::parse("line 1\nline 2", &limits).is_ok());
        assert!(MessageText::parse(&"x".repeat(16384), &limits).is_ok());
        let err = MessageText::parse(&"x".repeat(16385), &limits).unwrap_err();
        assert_eq!(err.to_string(), "text is 16385 characters long; the limit is 16384");
        assert!(MessageText::parse("", &limits).is_err());
    }

    #[test]
    fn message_ids_order_numerically() {
        let a: MessageId = "9-5".parse().unwrap();
        let b: MessageId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!("10".parse::<MessageId>().is_err());
        assert!("a-1".parse::<MessageId>().is_err());
        assert!("-1".parse::<MessageId>().is_err());
    }
}
