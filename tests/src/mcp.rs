//! A minimal MCP host: runs an MCP server over stdio (JSON-RPC 2.0, one message a line) and
//! drives it as an AI agent's host would, keeping every byte the server wrote for inspection.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::process::describe;

/// The protocol revision this host asks for (the one `@modelcontextprotocol/sdk` 1.0 speaks).
pub const MCP_PROTOCOL_VERSION: &str = "2024-11-05";

/// How long [`McpServer::call`] waits for an answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`McpServer::stop`] waits for the server to exit after SIGTERM, before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A JSON-RPC error answer: the server refused or failed the request. The MCP server for
/// PostgreSQL answers a failed query with code -32603 and PostgreSQL's (or pgwarden's) message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (JSON-RPC error {})", self.message, self.code)
    }
}

/// A server's answer to one request: its `result`, or its `error`.
pub type Reply = std::result::Result<Value, RpcError>;

/// A running MCP server with piped stdio; killed on drop.
pub struct McpServer {
    child: Child,
    command: String,
    stdin: Option<ChildStdin>,
    messages: Receiver<Value>,
    /// Answers read while waiting for another one, by id.
    early: HashMap<u64, Value>,
    next_id: u64,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl McpServer {
    /// Starts `cmd` (e.g. [`crate::mcp_server`]) with piped stdin, stdout and stderr.
    ///
    /// # Errors
    ///
    /// When the program cannot be started.
    pub fn spawn(mut cmd: Command) -> Result<McpServer> {
        let command = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let stdin = child.stdin.take();
        let stdout_pipe = child.stdout.take().context("no stdout pipe")?;
        let stderr_pipe = child.stderr.take().context("no stderr pipe")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, messages) = channel();
        let raw = Arc::clone(&stdout);
        let out_reader = thread::spawn(move || {
            let mut reader = BufReader::new(stdout_pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                lock(&raw).extend_from_slice(&line);
                let message = serde_json::from_slice(&line).unwrap_or_else(
                    |_| json!({ "unparsed": String::from_utf8_lossy(&line).trim_end() }),
                );
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        let err_buf = Arc::clone(&stderr);
        let err_reader = thread::spawn(move || {
            let mut pipe = stderr_pipe;
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                lock(&err_buf).extend_from_slice(&chunk[..n]);
            }
        });
        Ok(McpServer {
            child,
            command,
            stdin,
            messages,
            early: HashMap::new(),
            next_id: 1,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The MCP handshake: `initialize`, then the `notifications/initialized` notification.
    /// Returns the server's `initialize` result (`serverInfo`, `capabilities`, ...).
    ///
    /// # Errors
    ///
    /// When the server does not answer, or answers with an error.
    pub fn initialize(&mut self, client_name: &str) -> Result<Value> {
        let result = self
            .call(
                "initialize",
                json!({
                    "protocolVersion": MCP_PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": { "name": client_name, "version": env!("CARGO_PKG_VERSION") },
                }),
            )?
            .map_err(|e| anyhow::anyhow!("initialize refused: {e}"))?;
        self.notify("notifications/initialized", json!({}))?;
        Ok(result)
    }

    /// Sends the request `method` and returns its id without waiting for the answer (for a
    /// request that stays unanswered until something else happens, e.g. an approval).
    ///
    /// # Errors
    ///
    /// When the server's stdin is closed.
    pub fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        Ok(id)
    }

    /// Sends the notification `method` (no answer comes).
    ///
    /// # Errors
    ///
    /// When the server's stdin is closed.
    pub fn notify(&mut self, method: &str, params: Value) -> Result<()> {
        self.write(&json!({ "jsonrpc": "2.0", "method": method, "params": params }))
    }

    /// The answer to request `id` if it comes within `timeout`, `None` if not yet.
    ///
    /// # Errors
    ///
    /// When the server closed its stdout (exited) or the answer is malformed; the message
    /// carries the server's stderr.
    pub fn reply_within(&mut self, id: u64, timeout: Duration) -> Result<Option<Reply>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(message) = self.early.remove(&id) {
                return reply_of(&message).map(Some);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => {
                    // Notifications (no id) and answers to other requests wait their turn.
                    if let Some(other) = message.get("id").and_then(Value::as_u64) {
                        self.early.insert(other, message);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "the MCP server closed its stdout before answering request {id} \
                         ({})\n`{}`\n--- MCP server stderr ---\n{}",
                        status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
                        self.command,
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Sends the request `method` and waits up to 30 s for its answer.
    ///
    /// # Errors
    ///
    /// As [`McpServer::reply_within`], or when no answer comes in time.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Reply> {
        let id = self.send(method, params)?;
        match self.reply_within(id, CALL_TIMEOUT)? {
            Some(reply) => Ok(reply),
            None => bail!(
                "no answer to `{method}` (request {id}) within {CALL_TIMEOUT:?}\n\
                 --- MCP server stderr ---\n{}",
                self.stderr_text()
            ),
        }
    }

    /// `tools/call` of the tool `query` with `sql`: the rows (the tool's text, parsed as JSON),
    /// or the server's error.
    ///
    /// # Errors
    ///
    /// As [`McpServer::call`], or when the tool's answer is not JSON text.
    pub fn query(&mut self, sql: &str) -> Result<Reply> {
        let reply = self.call(
            "tools/call",
            json!({ "name": "query", "arguments": { "sql": sql } }),
        )?;
        let Ok(result) = reply else {
            return Ok(reply);
        };
        let text = tool_text(&result);
        let rows = serde_json::from_str(&text)
            .with_context(|| format!("the `query` tool answered {result} to {sql:?}"))?;
        Ok(Ok(rows))
    }

    /// Every byte the server wrote to stdout so far.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        lock(&self.stdout).clone()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Closes the server's stdin, sends SIGTERM, waits up to 5 s (then SIGKILL), and collects
    /// the rest of its output: afterwards [`McpServer::stdout_bytes`] is complete.
    ///
    /// # Errors
    ///
    /// When the process cannot be waited for.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        drop(self.stdin.take());
        if self.child.try_wait()?.is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.child.try_wait()?.is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
        }
        let status = self.child.wait()?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(status)
    }

    fn write(&mut self, message: &Value) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the MCP server's stdin is closed")?;
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        stdin
            .write_all(&line)
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "cannot write to the MCP server (did it exit?)\n--- MCP server stderr ---\n{}",
                    self.stderr_text()
                )
            })
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("warning: cannot stop the MCP server: {err:#}");
        }
    }
}

/// The concatenated `text` items of a `tools/call` result's `content`.
pub fn tool_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["text"].as_str())
        .collect()
}

fn reply_of(message: &Value) -> Result<Reply> {
    if let Some(error) = message.get("error") {
        return Ok(Err(RpcError {
            code: error["code"].as_i64().unwrap_or_default(),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        }));
    }
    match message.get("result") {
        Some(result) => Ok(Ok(result.clone())),
        None => bail!("a JSON-RPC answer with neither result nor error: {message}"),
    }
}

fn lock(buf: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_results_or_errors() {
        let ok = json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [] } });
        assert_eq!(reply_of(&ok).unwrap(), Ok(json!({ "tools": [] })));
        let err =
            json!({ "jsonrpc": "2.0", "id": 2, "error": { "code": -32603, "message": "no" } });
        assert_eq!(
            reply_of(&err).unwrap(),
            Err(RpcError {
                code: -32603,
                message: "no".into()
            })
        );
        assert!(reply_of(&json!({ "jsonrpc": "2.0", "id": 3 })).is_err());
    }

    #[test]
    fn tool_text_joins_text_items() {
        let result = json!({ "content": [
            { "type": "text", "text": "[1," },
            { "type": "image", "data": "" },
            { "type": "text", "text": "2]" },
        ] });
        assert_eq!(tool_text(&result), "[1,2]");
    }

    /// A stand-in server (`sh` answering one request) exercises the transport end to end.
    #[test]
    fn drives_a_stdio_server() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(
            // stderr first: once the reply is read, "bye" is in the pipe, even if `stop`'s
            // SIGTERM comes before the script's last line.
            r#"read -r line; echo bye >&2; echo '{"jsonrpc":"2.0","method":"notifications/message","params":{}}'; echo '{"jsonrpc":"2.0","id":1,"result":{"ok":true}}'; read -r rest"#,
        );
        let mut server = McpServer::spawn(cmd).unwrap();
        let reply = server.call("ping", json!({})).unwrap();
        assert_eq!(reply, Ok(json!({ "ok": true })));
        server.stop().unwrap();
        let out = String::from_utf8(server.stdout_bytes()).unwrap();
        assert!(out.contains("notifications/message") && out.contains("\"id\":1"));
        assert_eq!(server.stderr_text(), "bye\n");
    }
}
