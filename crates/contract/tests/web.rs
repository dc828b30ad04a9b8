//! The web page against the contract: every `.invoke("Method", ...)` in
//! `web/*.js` names a hub method with the arguments it takes, and every
//! `.on("OnX", ...)` a callback the server sends.

use std::path::{Path, PathBuf};

use next_chat_contract::{Callback, Method};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// Every `web/*.js` file, with its text.
fn scripts() -> Vec<(String, String)> {
    let mut scripts: Vec<(String, String)> = std::fs::read_dir(web_dir())
        .expect("web/ exists")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "js"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable script");
            (path.file_name().expect("a name").to_string_lossy().into_owned(), text)
        })
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty(), "no scripts in {}", web_dir().display());
    scripts
}

/// A call `.name(...)` found in a script: its line and its top-level arguments
/// as written.
#[derive(Debug)]
struct Call {
    line: usize,
    arguments: Vec<String>,
}

/// Every `.name(` call (also `?.name(`) in `source`, with its arguments split
/// at top-level commas; strings, template literals and nested brackets are
/// skipped over.
fn calls(source: &str, name: &str) -> Vec<Call> {
    let needle = format!(".{name}(");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = source[from..].find(&needle) {
        let open = from + at + needle.len();
        let line = source[..open].lines().count();
        let (arguments, end) = split_arguments(&source[open..])
            .unwrap_or_else(|| panic!("line {line}: unbalanced .{name}( call"));
        found.push(Call { line, arguments });
        from = open + end;
    }
    found
}

/// The arguments up to the `)` that closes the call, and where it ends.
fn split_arguments(rest: &str) -> Option<(Vec<String>, usize)> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut current = String::new();
    let mut arguments = Vec::new();
    for (i, c) in rest.char_indices() {
        if let Some(q) = quote {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => {
                quote = Some(c);
                current.push(c);
            }
            '(' | '[' | '{' => {
                depth += 1;
                current.push(c);
            }
            ')' if depth == 0 => {
                let last = current.trim();
                if !last.is_empty() {
                    arguments.push(last.to_string());
                }
                return Some((arguments, i + 1));
            }
            ')' | ']' | '}' => {
                depth = depth.checked_sub(1)?;
                current.push(c);
            }
            ',' if depth == 0 => arguments.push(std::mem::take(&mut current).trim().to_string()),
            _ => current.push(c),
        }
    }
    None
}

/// The text of a string literal (`"x"` or `'x'`), or `None` for anything else.
fn string_literal(argument: &str) -> Option<&str> {
    let quote = argument.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = argument.strip_prefix(quote)?.strip_suffix(quote)?;
    (!inner.contains(quote) && !inner.contains('\\')).then_some(inner)
}

#[test]
fn every_method_the_page_invokes_is_in_the_contract_with_its_arity() {
    let mut invoked = Vec::new();
    for (file, source) in scripts() {
        for call in calls(&source, "invoke") {
            let target =
                call.arguments.first().and_then(|a| string_literal(a)).unwrap_or_else(|| {
                    panic!("{file}:{}: invoke's method is not a string literal", call.line)
                });
            let method =
                Method::ALL.into_iter().find(|m| m.name() == target).unwrap_or_else(|| {
                    panic!("{file}:{}: {target} is not a hub method of the contract", call.line)
                });
            let given = call.arguments.len() - 1;
            assert!(
                !call.arguments[1..].iter().any(|a| a.starts_with("...")),
                "{file}:{}: {target} with spread arguments cannot be checked",
                call.line
            );
            assert_eq!(
                given,
                method.arity(),
                "{file}:{}: {target} takes {:?}, the page passes {:?}",
                call.line,
                method.arguments().iter().map(|a| a.name).collect::<Vec<_>>(),
                &call.arguments[1..]
            );
            invoked.push(method);
        }
    }
    // The page's own calls were found at all (a parser that finds nothing passes).
    for method in [Method::JoinGroup, Method::SendMessage, Method::GetMessagesAfter] {
        assert!(invoked.contains(&method), "the page never invokes {method:?}: {invoked:?}");
    }
}

#[test]
fn every_callback_the_page_handles_is_in_the_contract() {
    let mut handled = Vec::new();
    for (file, source) in scripts() {
        for call in calls(&source, "on") {
            let target =
                call.arguments.first().and_then(|a| string_literal(a)).unwrap_or_else(|| {
                    panic!("{file}:{}: on's target is not a string literal", call.line)
                });
            let callback =
                Callback::ALL.into_iter().find(|c| c.name() == target).unwrap_or_else(|| {
                    panic!("{file}:{}: {target} is not a callback of the contract", call.line)
                });
            handled.push(callback);
        }
    }
    assert!(handled.contains(&Callback::OnMessage), "the page never handles OnMessage");
}

#[test]
fn the_call_parser_splits_what_the_page_writes() {
    let source = r#"x.invoke("GetHistory", g, f(a, [b, c]), ")", `t,${u}`);
        y?.invoke('ListGroups');"#;
    let found = calls(source, "invoke");
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].arguments, ["\"GetHistory\"", "g", "f(a, [b, c])", "\")\"", "`t,${u}`"]);
    assert_eq!(found[1].arguments, ["'ListGroups'"]);
    assert_eq!(found[1].line, 2);
}
