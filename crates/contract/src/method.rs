//! The hub's methods: what a client may invoke, with which arguments, and what
//! comes back.

/// A hub method. Names match case-insensitively on the server ([`Method::parse`]);
/// clients send them as [`Method::name`] spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    CreateGroup,
    ListGroups,
    ListGroupsPage,
    JoinGroup,
    LeaveGroup,
    SendMessage,
    GetHistory,
    ListMembers,
    GetMessagesAfter,
}

/// What one argument must be on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A string.
    String,
    /// A string, or null for "none": still passed, so the arity stays the same.
    OptionalString,
    /// An integer.
    Integer,
}

/// One positional argument of a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argument {
    /// Its name in the docs and in error messages (`groupId`).
    pub name: &'static str,
    pub kind: ArgKind,
}

/// What a method's completion carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    /// No result.
    Nothing,
    /// `Group[]`: maps with one key, `groupId` (see [`crate::groups_value`]).
    Groups,
    /// `GroupJoinResult`: an integer (see [`JoinResult`]).
    JoinResult,
    /// `string[]`: user ids.
    Strings,
    /// `Message[]`, oldest first (see [`crate::Message`]).
    Messages,
}

impl Returns {
    /// How docs/PROTOCOL.md names the shape.
    pub const fn doc_name(self) -> &'static str {
        match self {
            Returns::Nothing => "none",
            Returns::Groups => "Group[]",
            Returns::JoinResult => "GroupJoinResult",
            Returns::Strings => "string[]",
            Returns::Messages => "Message[]",
        }
    }
}

/// `JoinGroup`'s result: the integer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinResult {
    /// Joined; the group's history came first, as `OnHistory`.
    Ok = 0,
    /// The group has its maximum number of distinct members.
    NoRoom = 1,
}

impl JoinResult {
    pub const fn wire(self) -> i64 {
        self as i64
    }

    pub const fn from_wire(value: i64) -> Option<JoinResult> {
        match value {
            0 => Some(JoinResult::Ok),
            1 => Some(JoinResult::NoRoom),
            _ => None,
        }
    }
}

const fn arg(name: &'static str, kind: ArgKind) -> Argument {
    Argument { name, kind }
}

const GROUP_ID: Argument = arg("groupId", ArgKind::String);
const LIMIT: Argument = arg("limit", ArgKind::Integer);
const AFTER: Argument = arg("after", ArgKind::OptionalString);
const TEXT: Argument = arg("text", ArgKind::String);
const BEFORE: Argument = arg("before", ArgKind::OptionalString);
const AFTER_ID: Argument = arg("afterId", ArgKind::String);

impl Method {
    pub const ALL: [Method; 9] = [
        Method::CreateGroup,
        Method::ListGroups,
        Method::ListGroupsPage,
        Method::JoinGroup,
        Method::LeaveGroup,
        Method::SendMessage,
        Method::GetHistory,
        Method::ListMembers,
        Method::GetMessagesAfter,
    ];

    /// The method's name, as clients send it.
    pub const fn name(self) -> &'static str {
        match self {
            Method::CreateGroup => "CreateGroup",
            Method::ListGroups => "ListGroups",
            Method::ListGroupsPage => "ListGroupsPage",
            Method::JoinGroup => "JoinGroup",
            Method::LeaveGroup => "LeaveGroup",
            Method::SendMessage => "SendMessage",
            Method::GetHistory => "GetHistory",
            Method::ListMembers => "ListMembers",
            Method::GetMessagesAfter => "GetMessagesAfter",
        }
    }

    /// The method `target` names, in any case; `None` for a name the hub lacks.
    pub fn parse(target: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(target))
    }

    /// The arguments, in order. Every one is passed: the arity is their number.
    pub const fn arguments(self) -> &'static [Argument] {
        match self {
            Method::CreateGroup | Method::JoinGroup | Method::LeaveGroup | Method::ListMembers => {
                &[GROUP_ID]
            }
            Method::ListGroups => &[],
            Method::ListGroupsPage => &[AFTER, LIMIT],
            Method::SendMessage => &[GROUP_ID, TEXT],
            Method::GetHistory => &[GROUP_ID, BEFORE, LIMIT],
            Method::GetMessagesAfter => &[GROUP_ID, AFTER_ID, LIMIT],
        }
    }

    /// How many arguments an invocation carries.
    pub const fn arity(self) -> usize {
        self.arguments().len()
    }

    pub const fn returns(self) -> Returns {
        match self {
            Method::CreateGroup | Method::LeaveGroup | Method::SendMessage => Returns::Nothing,
            Method::ListGroups | Method::ListGroupsPage => Returns::Groups,
            Method::JoinGroup => Returns::JoinResult,
            Method::ListMembers => Returns::Strings,
            Method::GetHistory | Method::GetMessagesAfter => Returns::Messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_in_any_case_and_unknown_ones_do_not() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.name()), Some(method));
            assert_eq!(Method::parse(&method.name().to_lowercase()), Some(method));
        }
        assert_eq!(Method::parse("DropTables"), None);
        assert_eq!(Method::parse(""), None);
    }

    #[test]
    fn join_results_round_trip() {
        for result in [JoinResult::Ok, JoinResult::NoRoom] {
            assert_eq!(JoinResult::from_wire(result.wire()), Some(result));
        }
        assert_eq!(JoinResult::from_wire(2), None);
    }
}
