//! What the demo's MCP host asks the MCP server for PostgreSQL, step by step, with what each
//! answer shows and a check that pgwarden answered as the PCI policy says.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use pgwarden_e2e::{Agent, McpServer, PgServer, Reply};
use serde_json::{Value, json};

use super::interrupt::Interrupt;

/// How long a step waits for the MCP server's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a wait for an answer looks at the interrupt flag.
const POLL: Duration = Duration::from_millis(100);

/// Rows the payments read shows (a `reader`'s result streams 100 rows without approval).
const PAYMENTS_SHOWN: usize = 5;

/// Where the steps run, and what they saw.
pub struct Scenario<'a> {
    pub mcp: &'a mut McpServer,
    pub agent: &'a Agent,
    pub pg: &'a PgServer,
    pub interrupt: &'a Interrupt,
    /// pgwarden's ids of the MCP server's sessions, as `pgwarden status` listed them.
    pub sessions: BTreeSet<String>,
    steps: usize,
}

impl<'a> Scenario<'a> {
    pub fn new(
        mcp: &'a mut McpServer,
        agent: &'a Agent,
        pg: &'a PgServer,
        interrupt: &'a Interrupt,
    ) -> Self {
        Scenario {
            mcp,
            agent,
            pg,
            interrupt,
            sessions: BTreeSet::new(),
            steps: 0,
        }
    }

    /// Every step, in order.
    pub fn run(&mut self) -> Result<()> {
        self.list_tools()?;
        self.list_resources()?;
        self.list_tables()?;
        self.read_payments()?;
        self.read_secrets()?;
        self.drop_payments()?;
        self.bulk_read_approved()?;
        Ok(())
    }

    /// A read of every payment: after its first 100 rows the policy's `bulk-payments-read` rule
    /// holds the rest of the result until a person approves; the demo approves it as root with
    /// `pgwarden approvals approve`.
    fn bulk_read_approved(&mut self) -> Result<()> {
        let sql = "SELECT id, card_number, amount FROM payments ORDER BY id";
        self.step(
            "a bulk read of payments: past 100 rows the result needs a person's yes",
            &format!("tools/call query {sql:?}"),
        );
        let id = self.send_query(sql)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let request = loop {
            self.interrupt.check()?;
            let out = self.agent.cli(&["approvals", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(r) = list["pending"].as_array().and_then(|p| p.first()).cloned() {
                break r;
            }
            if Instant::now() > deadline {
                bail!("the bulk read was never held for approval");
            }
            std::thread::sleep(POLL);
        };
        let rid = request["id"].as_u64().unwrap_or(0).to_string();
        say(&format!(
            "-> held by pgwarden mid-result (rule {}): request #{rid} from pid {} ({}); the MCP server waits",
            text(&request["rule"]["id"]),
            request["pid"],
            text(&request["exe"])
        ));
        say(&format!(
            "$ pgwarden approvals approve {rid} --comment \"demo: month-end report\""
        ));
        let out = self.agent.cli(&[
            "approvals",
            "approve",
            &rid,
            "--comment",
            "demo: month-end report",
        ]);
        if !out.status.success() {
            bail!("approve failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        say(&format!(
            "   {}",
            String::from_utf8_lossy(&out.stdout).trim()
        ));
        let reply = self.wait(id)?;
        let result = result_or_bail(reply, "the approved bulk read")?;
        let rows: Vec<Value> =
            serde_json::from_str(&pgwarden_e2e::tool_text(&result)).unwrap_or_default();
        let unmasked = rows
            .iter()
            .filter_map(|r| r["card_number"].as_str())
            .filter(|p| !masked_pan(p))
            .count();
        if rows.len() < 100 || unmasked > 0 {
            bail!(
                "expected every payment, masked; got {} rows, {unmasked} unmasked",
                rows.len()
            );
        }
        say(&format!(
            "-> approved: the MCP server got all {} payments, card numbers still masked",
            rows.len()
        ));
        Ok(())
    }

    fn list_tools(&mut self) -> Result<()> {
        self.step("the server's tools", "tools/list");
        let result = self.request("tools/list", json!({}))?;
        let tools = result_or_bail(result, "tools/list")?;
        for tool in tools["tools"].as_array().into_iter().flatten() {
            say(&format!(
                "{}: {}",
                tool["name"].as_str().unwrap_or("?"),
                tool["description"].as_str().unwrap_or("")
            ));
        }
        Ok(())
    }

    fn list_resources(&mut self) -> Result<()> {
        self.step(
            "the server's resources (it lists tables through pgwarden)",
            "resources/list",
        );
        let result = self.request("resources/list", json!({}))?;
        let resources = result_or_bail(result, "resources/list")?;
        for resource in resources["resources"].as_array().into_iter().flatten() {
            say(resource["uri"].as_str().unwrap_or("?"));
        }
        self.note_sessions()
    }

    fn list_tables(&mut self) -> Result<()> {
        let sql = "SELECT table_name FROM information_schema.tables \
                   WHERE table_schema = 'public' ORDER BY table_name";
        let rows = self.expect_rows("list the tables", sql, &["table_name"])?;
        let names: Vec<&str> = rows
            .iter()
            .filter_map(|r| r["table_name"].as_str())
            .collect();
        if names != ["customers", "payments", "secrets"] {
            bail!("expected the tables customers, payments, secrets; got {names:?}");
        }
        Ok(())
    }

    fn read_payments(&mut self) -> Result<()> {
        let sql = format!(
            "SELECT id, card_number, cardholder, amount, merchant FROM payments \
             ORDER BY id LIMIT {PAYMENTS_SHOWN}"
        );
        let rows = self.expect_rows(
            "read payments",
            &sql,
            &["id", "card_number", "cardholder", "amount", "merchant"],
        )?;
        let unmasked: Vec<&str> = rows
            .iter()
            .filter_map(|r| r["card_number"].as_str())
            .filter(|pan| !masked_pan(pan))
            .collect();
        if rows.len() != PAYMENTS_SHOWN || !unmasked.is_empty() {
            bail!(
                "expected {PAYMENTS_SHOWN} rows with masked card numbers; unmasked: {unmasked:?}"
            );
        }
        say("-> allowed; pgwarden masked card_number (first 6 and last 4 digits: PCI DSS 3.4.1)");
        Ok(())
    }

    fn read_secrets(&mut self) -> Result<()> {
        self.expect_denied(
            "read the secrets table",
            "SELECT * FROM secrets",
            "table.denied",
        )
    }

    fn drop_payments(&mut self) -> Result<()> {
        self.expect_denied(
            "drop the payments table",
            "DROP TABLE payments",
            "class.ddl",
        )?;
        say(
            "   (the MCP server runs every query in a READ ONLY transaction; pgwarden's policy \
             refused the DROP before PostgreSQL saw it)",
        );
        let left = self.pg.psql_direct("SELECT count(*) FROM payments");
        say(&format!(
            "-> payments still has {left} rows (counted directly, outside the tagged cgroup)"
        ));
        Ok(())
    }

    /// Prints a step's header: its number, what it does, and the request.
    fn step(&mut self, title: &str, request: &str) {
        self.steps += 1;
        println!("\n[{}] {title}", self.steps);
        say(&format!("MCP {request}"));
    }

    /// Sends `tools/call` of `query` with `sql` and returns the request id without waiting for
    /// the answer (for a statement pgwarden holds until someone decides).
    pub fn send_query(&mut self, sql: &str) -> Result<u64> {
        self.mcp.send(
            "tools/call",
            json!({ "name": "query", "arguments": { "sql": sql } }),
        )
    }

    /// Waits for the answer to request `id`, watching for Ctrl-C.
    pub fn wait(&mut self, id: u64) -> Result<Reply> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            self.interrupt.check()?;
            if let Some(reply) = self.mcp.reply_within(id, POLL)? {
                return Ok(reply);
            }
            if Instant::now() >= deadline {
                bail!("the MCP server did not answer request {id} within {REPLY_TIMEOUT:?}");
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Reply> {
        let id = self.mcp.send(method, params)?;
        self.wait(id)
    }

    /// Runs `sql` with the `query` tool: the tool's rows, or the server's error.
    pub fn query(&mut self, sql: &str) -> Result<Reply> {
        let id = self.send_query(sql)?;
        let reply = self.wait(id)?;
        self.note_sessions()?;
        Ok(match reply {
            Ok(result) => {
                let text = pgwarden_e2e::tool_text(&result);
                Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => Err(e),
        })
    }

    /// A `query` step that must return rows; prints them as a table of `columns`.
    fn expect_rows(&mut self, title: &str, sql: &str, columns: &[&str]) -> Result<Vec<Value>> {
        self.step(title, &format!("tools/call query: {sql}"));
        match self.query(sql)? {
            Ok(Value::Array(rows)) => {
                print!("{}", table(&rows, columns));
                Ok(rows)
            }
            Ok(other) => bail!("expected rows, got {other}"),
            Err(e) => bail!("expected rows, got the error: {e}"),
        }
    }

    /// A `query` step that pgwarden must deny with `rule`.
    fn expect_denied(&mut self, title: &str, sql: &str, rule: &str) -> Result<()> {
        self.step(title, &format!("tools/call query: {sql}"));
        match self.query(sql)? {
            Err(e) if e.message.starts_with(&format!("pgwarden: {rule}:")) => {
                say(&format!("-> denied, the MCP server returned: {e}"));
                Ok(())
            }
            Err(e) => bail!("expected pgwarden's `{rule}` denial, got the error: {e}"),
            Ok(rows) => bail!("expected pgwarden's `{rule}` denial, got rows: {rows}"),
        }
    }

    /// Adds the MCP server's live sessions to [`Scenario::sessions`], and shows how pgwarden
    /// sees the first one.
    fn note_sessions(&mut self) -> Result<()> {
        let status = self.agent.status();
        let pid = u64::from(self.mcp.pid());
        for session in status["sessions"].as_array().into_iter().flatten() {
            if session["identity"]["pid"].as_u64() != Some(pid) {
                continue;
            }
            let Some(id) = session["id"].as_str() else {
                continue;
            };
            if self.sessions.is_empty() {
                let who = &session["identity"];
                say(&format!(
                    "pgwarden's view of this connection: session {id}, workload {}, pid {} ({}), \
                     uid {} ({}), cgroup {}, to {}",
                    text(&session["workload"]),
                    text(&who["pid"]),
                    text(&who["exe"]),
                    text(&who["uid"]),
                    text(&who["user"]),
                    text(&who["cgroup"]),
                    text(&session["server"]),
                ));
            }
            self.sessions.insert(id.to_owned());
        }
        Ok(())
    }
}

fn result_or_bail(reply: Reply, what: &str) -> Result<Value> {
    reply.map_err(|e| anyhow::anyhow!("{what} failed: {e}"))
}

/// A JSON value as plain text (strings unquoted).
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    }
}

/// Whether `value` looks like a PAN masked to its first 6 and last 4 digits.
fn masked_pan(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() >= 13
        && bytes[..6].iter().all(u8::is_ascii_digit)
        && bytes[bytes.len() - 4..].iter().all(u8::is_ascii_digit)
        && bytes[6..bytes.len() - 4].iter().all(|&b| b == b'*')
}

/// `rows` as an aligned text table of `columns`, indented like [`say`].
fn table(rows: &[Value], columns: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| text(&row[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: &[String]| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("    {}\n", padded.join("  ").trim_end())
    };
    let header: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = line(&header);
    out.push_str(&line(&rule));
    for row in &cells {
        out.push_str(&line(row));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "    (no rows)");
    }
    out
}

/// Prints one indented line of a step's output.
pub fn say(line: &str) {
    println!("    {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_pans_keep_six_and_four() {
        assert!(masked_pan("411111******1111"));
        assert!(masked_pan("370000*****0002"));
        assert!(!masked_pan("4111111111111111"));
        assert!(!masked_pan("41111*******1111"));
        assert!(!masked_pan("411111**1111"));
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            json!({ "id": 1, "name": "a" }),
            json!({ "id": 100, "name": null }),
        ];
        assert_eq!(
            table(&rows, &["id", "name"]),
            "    id   name\n    ---  ----\n    1    a\n    100  ?\n"
        );
    }
}
