//! Interactive mode: a rustyline editor (with history) on a thread of its own,
//! and its external printer, which prints incoming lines above the line being
//! typed and redraws that line intact.

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::{mpsc, oneshot};

const PROMPT: &str = "> ";

/// The editor thread's end of the conversation.
pub struct Editor {
    /// Each typed line; `None` at Ctrl-D or Ctrl-C.
    lines: mpsc::UnboundedReceiver<Option<String>>,
    /// Tells the editor to read the next line (after the last one's command ran).
    ready: std::sync::mpsc::Sender<()>,
}

impl Editor {
    /// Starts the editor, and returns it with the channel to its external printer.
    pub async fn start() -> Result<(Editor, std::sync::mpsc::Sender<String>), String> {
        let (setup, setup_done) = oneshot::channel();
        let (line_tx, lines) = mpsc::unbounded_channel();
        let (ready, ready_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut editor = match DefaultEditor::new() {
                Ok(editor) => editor,
                Err(e) => {
                    let _ = setup.send(Err(e.to_string()));
                    return;
                }
            };
            match editor.create_external_printer() {
                Ok(printer) => {
                    let _ = setup.send(Ok(spawn_printer(printer)));
                }
                Err(e) => {
                    let _ = setup.send(Err(e.to_string()));
                    return;
                }
            }
            loop {
                match editor.readline(PROMPT) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        if line_tx.send(Some(line)).is_err() || ready_rx.recv().is_err() {
                            return;
                        }
                    }
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) | Err(_) => {
                        let _ = line_tx.send(None);
                        return;
                    }
                }
            }
        });
        let printer =
            setup_done.await.map_err(|_| "the line editor did not start".to_string())??;
        Ok((Editor { lines, ready }, printer))
    }

    /// The next line typed; `None` when the user is done.
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.recv().await.flatten()
    }

    /// Lets the editor show the prompt again.
    pub fn ready(&self) {
        let _ = self.ready.send(());
    }
}

/// The external printer blocks until the editor takes the line, so it gets a
/// thread of its own rather than an async task.
fn spawn_printer<P: ExternalPrinter + Send + 'static>(
    mut printer: P,
) -> std::sync::mpsc::Sender<String> {
    let (lines, receiver) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        while let Ok(line) = receiver.recv() {
            if printer.print(line).is_err() {
                return;
            }
        }
    });
    lines
}
