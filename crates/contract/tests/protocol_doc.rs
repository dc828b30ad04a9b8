//! docs/PROTOCOL.md against the contract: its methods table lists exactly the
//! contract's methods, with the same arguments (nullable ones said so) and
//! results; its callbacks table exactly the callbacks; its `Message` and
//! `Group` examples the keys in the order the server writes them.

use std::path::Path;

use next_chat_contract::{ArgKind, Callback, JoinResult, Method, keys};

fn protocol_md() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows (cells trimmed, header and rule dropped) of the first table
/// under the heading `heading`.
fn table(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .lines()
        .position(|line| line.trim() == heading)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no heading {heading:?}"));
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip(start + 1)
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
            inner.split('|').map(|cell| cell.trim().to_string()).collect()
        })
        .collect();
    assert!(rows.len() > 2, "no table under {heading:?}");
    rows[2..].to_vec()
}

/// The code spans (`...`) of a cell, in order.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// One documented argument: its name, and whether the doc says it may be null.
fn documented_arguments(cell: &str) -> Vec<(String, bool)> {
    if cell == "none" {
        return Vec::new();
    }
    // Split at commas outside parentheses: `after` (string or null), `limit` (1..1000)
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .iter()
        .map(|part| {
            let name = code_spans(part)
                .first()
                .unwrap_or_else(|| panic!("an argument without a `name`: {part:?} in {cell:?}"))
                .to_string();
            (name, part.contains("or null"))
        })
        .collect()
}

#[test]
fn the_methods_table_is_the_contract() {
    let doc = protocol_md();
    let rows = table(&doc, "## Hub methods (client to server)");
    let documented: Vec<&str> = rows.iter().map(|row| code_spans(&row[0])[0]).collect();
    let contract: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(documented, contract, "PROTOCOL.md's methods, in the contract's order");
    for (row, method) in rows.iter().zip(Method::ALL) {
        let arguments: Vec<(String, bool)> = method
            .arguments()
            .iter()
            .map(|a| (a.name.to_string(), a.kind == ArgKind::OptionalString))
            .collect();
        assert_eq!(
            documented_arguments(&row[1]),
            arguments,
            "{method:?}'s arguments (name, may be null) in PROTOCOL.md: {:?}",
            row[1]
        );
        let result = code_spans(&row[2]).first().copied().unwrap_or(row[2].as_str());
        assert_eq!(result, method.returns().doc_name(), "{method:?}'s result in PROTOCOL.md");
    }
}

#[test]
fn the_callbacks_table_is_the_contract() {
    let doc = protocol_md();
    let rows = table(&doc, "## Client callbacks (server to client)");
    let documented: Vec<&str> = rows.iter().map(|row| code_spans(&row[0])[0]).collect();
    let contract: Vec<&str> = Callback::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(documented, contract, "PROTOCOL.md's callbacks");
    for (row, callback) in rows.iter().zip(Callback::ALL) {
        assert_eq!(
            code_spans(&row[1]),
            [callback.argument().doc_name()],
            "{callback:?}'s argument in PROTOCOL.md"
        );
    }
}

/// The keys of the JSON example after `- `Shape`: ` in the Shapes section.
fn example_keys(doc: &str, shape: &str) -> Vec<String> {
    let prefix = format!("- `{shape}`: `");
    let line = doc
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no {shape} example"));
    let example = code_spans(line)[1];
    example
        .split('"')
        .skip(1)
        .step_by(2)
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, k)| k.to_string())
        .collect()
}

#[test]
fn the_shapes_have_the_contracts_keys_in_its_order() {
    let doc = protocol_md();
    assert_eq!(example_keys(&doc, "Message"), keys::MESSAGE);
    assert_eq!(example_keys(&doc, "Group"), keys::GROUP);
    let join = format!(
        "- `GroupJoinResult`: the integer `{}` (Ok) or `{}` (NoRoom).",
        JoinResult::Ok.wire(),
        JoinResult::NoRoom.wire()
    );
    assert!(doc.lines().any(|line| line == join), "PROTOCOL.md lacks {join:?}");
}
