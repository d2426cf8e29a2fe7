//! What a session remembers about the protocol conversation: prepared statements, portals and
//! their result formats, the current row description, the transaction status, and where
//! pgwarden's own answers (denials) go in the stream of the server's replies. Pure logic.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::wire::backend::Column;

/// A bound portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    /// The statement it was bound from.
    pub statement: String,
    /// Result format codes from Bind.
    pub result_formats: crate::wire::frontend::Formats,
}

/// A denial waiting for its place in the server's replies. The statement was replaced by a
/// marker the server rejects as a syntax error naming `token`; that error is swapped for
/// `error`, so the client sees pgwarden's refusal exactly where PostgreSQL would have put an
/// error, with PostgreSQL's own transaction and discard-until-Sync behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Marker {
    token: String,
    segment: u64,
    error: Bytes,
}

/// Per-session protocol state.
#[derive(Debug)]
pub struct ProtoState {
    statements: HashMap<String, Arc<str>>,
    portals: HashMap<String, Portal>,
    /// Transaction status from the last ReadyForQuery.
    pub txn_status: u8,
    markers: VecDeque<Marker>,
    /// Messages sent that each end in one ReadyForQuery (Query, Sync, FunctionCall), plus the
    /// one after authentication.
    segments_sent: u64,
    ready_seen: u64,
    marker_seq: u64,
    marker_prefix: String,
    pending: VecDeque<Pending>,
    inflight: VecDeque<InFlight>,
    statement_no: u64,
    /// Prepared statements whose execution needs approval.
    held: HashMap<String, Arc<crate::approval::Rule>>,
    /// Prepared statements whose executions run under a row limit.
    guarded: HashMap<String, crate::policy::WriteGuard>,
    /// Prepared statements whose results are counted against read limits.
    read_limits: HashMap<String, Vec<crate::policy::ReadLimit>>,
    /// The server skips messages until a Sync not yet sent (an extended-protocol error came
    /// after the last Sync sent).
    skipping: bool,
    statement_cols: HashMap<String, Arc<[Column]>>,
    portal_cols: HashMap<String, Arc<[Column]>>,
    streaming: bool,
    /// Extended-protocol messages were sent since the last Sync: the batch is open.
    batch_open: bool,
    /// The profile's `record_results` under the batch's policy version: statements sent
    /// now keep what their results send.
    record_results: Option<crate::policy::RecordResults>,
}

impl ProtoState {
    /// Fresh state; `marker_prefix` makes marker tokens unique to the session.
    pub fn new(marker_prefix: &str) -> Self {
        Self {
            statements: HashMap::new(),
            portals: HashMap::new(),
            txn_status: b'I',
            markers: VecDeque::new(),
            segments_sent: 1,
            ready_seen: 0,
            marker_seq: 0,
            marker_prefix: marker_prefix.to_owned(),
            pending: VecDeque::new(),
            held: HashMap::new(),
            guarded: HashMap::new(),
            read_limits: HashMap::new(),
            skipping: false,
            inflight: VecDeque::new(),
            statement_no: 0,
            statement_cols: HashMap::new(),
            portal_cols: HashMap::new(),
            streaming: false,
            batch_open: false,
            record_results: None,
        }
    }

    /// The `record_results` of the policy version the statements sent from now on run under
    /// (`None`: their results are not kept).
    pub fn record_results(&mut self, r: Option<crate::policy::RecordResults>) {
        self.record_results = r;
    }

    /// Whether the statement whose results stream now keeps them ([`Self::result_sent`]).
    pub fn capturing(&self) -> bool {
        self.inflight.front().is_some_and(|f| f.results.is_some())
    }

    /// A DataRow (`b'D'`) or CopyData (`b'd'`) of the streaming statement went to the client,
    /// whole as sent.
    pub fn result_sent(&mut self, tag: u8, message: &[u8]) {
        if let Some(c) = self
            .inflight
            .front_mut()
            .and_then(|f| f.results.as_deref_mut())
        {
            if tag == b'd' {
                c.copy_data(message);
            } else {
                c.data_row(message);
            }
        }
    }

    /// The streaming statement's result set has these columns.
    fn result_columns(&mut self, cols: &Arc<[Column]>) {
        if let Some(c) = self
            .inflight
            .front_mut()
            .and_then(|f| f.results.as_deref_mut())
        {
            c.columns(Arc::clone(cols));
        }
    }

    /// Whether an extended-protocol batch is open (messages sent since the last Sync): nothing
    /// of pgwarden's own may be sent into it.
    pub fn batch_open(&self) -> bool {
        self.batch_open
    }

    /// Whether the reply the server owes next is that of pgwarden's own query.
    pub fn resolving(&self) -> bool {
        self.pending.front() == Some(&Pending::Resolve)
    }

    /// The message of pgwarden's own the server answers next, if it is one.
    pub fn own_front(&self) -> Option<Own> {
        match self.pending.front() {
            Some(Pending::Own(o)) => Some(*o),
            _ => None,
        }
    }

    /// Whether any message of pgwarden's own that brackets a guarded write (counting rows,
    /// or the transaction around it) is still unanswered.
    pub fn own_pending(&self) -> bool {
        self.pending.iter().any(|p| {
            matches!(
                p,
                Pending::Own(Own::Begin | Own::Parse | Own::Bind | Own::Rows { .. })
            )
        })
    }

    /// Whether any message of pgwarden's own is still unanswered.
    pub fn has_own(&self) -> bool {
        self.pending.iter().any(|p| matches!(p, Pending::Own(_)))
    }

    /// Whether the server has answered everything sent (the transaction status is current).
    pub fn quiet(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the server skips what is sent now (until a Sync not yet sent).
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// Marks a prepared statement as running under a row limit when executed.
    pub fn guard_statement(&mut self, name: &str, guard: crate::policy::WriteGuard) {
        self.guarded.insert(name.to_owned(), guard);
    }

    /// Marks a prepared statement's results as counted against read limits.
    pub fn limit_statement_reads(&mut self, name: &str, limits: Vec<crate::policy::ReadLimit>) {
        self.read_limits.insert(name.to_owned(), limits);
    }

    /// The read limits of the statement behind `portal`, with its text.
    pub fn portal_reads(&self, portal: &str) -> Option<ReadWatch> {
        let statement = &self.portals.get(portal)?.statement;
        let limits = self.read_limits.get(statement)?;
        let sql = self
            .statements
            .get(statement)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        Some(ReadWatch::new(limits.clone(), sql))
    }

    /// Counts the statement sent last against `watch`.
    pub fn watch_last(&mut self, watch: ReadWatch) {
        if let Some(f) = self.inflight.back_mut() {
            f.reads = Some(Box::new(watch));
        }
    }

    /// The read watch of the statement whose results stream now.
    pub fn watch_front(&mut self) -> Option<&mut ReadWatch> {
        self.inflight.front_mut()?.reads.as_deref_mut()
    }

    /// The statement whose results stream now.
    pub fn front_inflight(&mut self) -> Option<&mut InFlight> {
        self.inflight.front_mut()
    }

    /// The row limit of the statement behind `portal`, if it runs under one.
    pub fn guarded_portal(&self, portal: &str) -> Option<crate::policy::WriteGuard> {
        let statement = &self.portals.get(portal)?.statement;
        self.guarded.get(statement).cloned()
    }

    /// Marks a prepared statement as needing approval when executed.
    pub fn hold_statement(&mut self, name: &str, rule: Arc<crate::approval::Rule>) {
        self.held.insert(name.to_owned(), rule);
    }

    /// The approval rule and text of the statement behind `portal`, if it needs approval.
    pub fn held_portal(&self, portal: &str) -> Option<(Arc<crate::approval::Rule>, String)> {
        let statement = &self.portals.get(portal)?.statement;
        let rule = self.held.get(statement)?;
        Some((
            Arc::clone(rule),
            self.statements
                .get(statement)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ))
    }

    /// A Parse was sent: `name` now holds `sql` (the unnamed one is replaced).
    pub fn parsed(&mut self, name: &str, sql: &str) {
        self.held.remove(name);
        self.guarded.remove(name);
        self.read_limits.remove(name);
        self.statement_cols.remove(name);
        // The unnamed statement parsed again with the same text (as drivers do for every
        // statement) keeps the text it has: no allocation.
        if self.statements.get(name).is_none_or(|s| **s != *sql) {
            self.statements.insert(name.to_owned(), Arc::from(sql));
        }
    }

    /// The text of a prepared statement.
    pub fn statement(&self, name: &str) -> Option<&Arc<str>> {
        self.statements.get(name)
    }

    /// A Bind was sent.
    pub fn bound(
        &mut self,
        portal: &str,
        statement: &str,
        result_formats: crate::wire::frontend::Formats,
    ) {
        self.portal_cols.remove(portal);
        self.portals.insert(
            portal.to_owned(),
            Portal {
                statement: statement.to_owned(),
                result_formats,
            },
        );
    }

    /// A portal.
    pub fn portal(&self, name: &str) -> Option<&Portal> {
        self.portals.get(name)
    }

    /// A Close was sent.
    pub fn closed(&mut self, kind: u8, name: &str) {
        if kind == b'S' {
            self.statements.remove(name);
            self.statement_cols.remove(name);
            self.held.remove(name);
            self.guarded.remove(name);
            self.read_limits.remove(name);
        } else {
            self.portals.remove(name);
            self.portal_cols.remove(name);
        }
    }

    /// A message that ends in one ReadyForQuery was sent.
    pub fn segment_sent(&mut self) {
        self.segments_sent += 1;
    }

    /// A denial: returns the marker SQL to send in the statement's place, and remembers the
    /// error to show instead of the server's complaint about it.
    pub fn deny(&mut self, error: Bytes) -> String {
        self.marker_seq += 1;
        let token = format!("pgwarden_denied_{}_{}", self.marker_prefix, self.marker_seq);
        self.markers.push_back(Marker {
            token: token.clone(),
            segment: self.segments_sent,
            error,
        });
        token
    }

    /// The server sent ReadyForQuery with `status`.
    pub fn ready(&mut self, status: u8) {
        let index = self.ready_seen;
        self.ready_seen += 1;
        self.txn_status = status;
        // Markers of finished segments whose error never came (an earlier error in the same
        // pipeline made the server skip them, as it would have skipped the real statement).
        while self.markers.front().is_some_and(|m| m.segment <= index) {
            self.markers.pop_front();
        }
        if status == b'I' {
            // Portals do not survive their transaction.
            self.portals.retain(|name, _| name.is_empty());
        }
    }

    /// The server reported an error with primary message `message`: pgwarden's own error
    /// when it is about a marker.
    pub fn replace_error(&mut self, message: &str) -> Option<Bytes> {
        if self.markers.is_empty() {
            return None;
        }
        let pos = self
            .markers
            .iter()
            .position(|m| message.contains(m.token.as_str()))?;
        self.markers.remove(pos).map(|m| m.error)
    }

    /// Whether denials are waiting for their place.
    pub fn has_markers(&self) -> bool {
        !self.markers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_find_their_place_or_lapse() {
        let mut s = ProtoState::new("s1");
        s.ready(b'I'); // after authentication
        // Query 1 denied.
        let token = s.deny(Bytes::from_static(b"E1"));
        s.segment_sent();
        assert!(token.starts_with("pgwarden_denied_s1_"));
        assert_eq!(s.replace_error("syntax error at or near \"x\""), None);
        assert_eq!(
            s.replace_error(&format!("syntax error at or near \"{token}\"")),
            Some(Bytes::from_static(b"E1"))
        );
        s.ready(b'I');
        assert!(!s.has_markers());

        // Pipeline: Parse denied after a statement that fails; the server skips the marker.
        let _ = s.deny(Bytes::from_static(b"E2"));
        s.segment_sent(); // Sync
        s.segment_sent(); // the next Query
        assert_eq!(s.replace_error("division by zero"), None);
        s.ready(b'I');
        assert!(
            !s.has_markers(),
            "the lapsed marker is dropped at its segment's ReadyForQuery"
        );
    }

    #[test]
    fn tracks_statements_and_portals() {
        let mut s = ProtoState::new("x");
        s.parsed("a", "select 1");
        s.bound("", "a", smallvec::smallvec![1]);
        s.bound("p", "a", smallvec::smallvec![0]);
        assert_eq!(&**s.statement("a").unwrap(), "select 1");
        assert_eq!(s.portal("").unwrap().result_formats.as_slice(), [1]);
        s.ready(b'T');
        assert!(s.portal("p").is_some());
        s.ready(b'I');
        assert!(s.portal("p").is_none());
        s.closed(b'S', "a");
        assert!(s.statement("a").is_none());
    }
}

/// A reply the server owes for a message the client sent, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// ParameterDescription and RowDescription/NoData of a statement.
    DescribeStatement(String),
    /// RowDescription/NoData of a portal.
    DescribePortal(String),
    /// Rows of a portal, then CommandComplete/EmptyQuery/PortalSuspended.
    Execute(String),
    /// CloseComplete.
    Close,
    /// ReadyForQuery after an extended-protocol batch.
    Sync,
    /// Results, then ReadyForQuery, of a simple Query.
    Query,
    /// FunctionCallResponse, then ReadyForQuery.
    FunctionCall,
    /// Results, then ReadyForQuery, of pgwarden's own query (resolving masked columns): the
    /// client sees none of it.
    Resolve,
    /// A message of pgwarden's own around a guarded write: the client sees none of its reply
    /// (except the ReadyForQuery of the transaction's end, which is the client's).
    Own(Own),
}

/// pgwarden's own messages around a write that runs under a row limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Own {
    /// BEGIN (a simple Query) before a guarded simple Query outside a transaction.
    Begin,
    /// Parse of the row-count statement (extended protocol).
    Parse,
    /// Bind of it.
    Bind,
    /// Close of it or its portals.
    Close,
    /// The count of rows changed in the transaction so far, before or after the write: a
    /// simple Query, or an Execute.
    Rows {
        /// After the write (else before).
        after: bool,
        /// A simple Query (else an Execute).
        simple: bool,
    },
    /// COMMIT or ROLLBACK of the transaction pgwarden began (a simple Query).
    End,
    /// A statement that fails, so the client's transaction or batch fails after a refused
    /// write, as it would have after an error of the server's.
    Abort {
        /// A simple Query (else a Parse).
        simple: bool,
    },
    /// `SET ROLE` or `RESET ROLE` (a simple Query) around a statement that runs as its
    /// approval rule's `run_as` role.
    Role,
}

impl Pending {
    /// Whether the server answers it with a ReadyForQuery of its own.
    fn ends_in_ready(&self) -> bool {
        matches!(
            self,
            Pending::Sync
                | Pending::Query
                | Pending::FunctionCall
                | Pending::Resolve
                | Pending::Own(
                    Own::Begin
                        | Own::End
                        | Own::Rows { simple: true, .. }
                        | Own::Abort { simple: true }
                        | Own::Role
                )
        )
    }
}

/// What the server's reply means for the columns of the rows that follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultStart {
    /// Rows will follow with these columns (formats as sent).
    Columns(Arc<[Column]>),
    /// Nothing to announce.
    None,
}

impl ProtoState {
    /// The client sent a message that the server will answer.
    pub fn expect(&mut self, p: Pending) {
        self.batch_open = !p.ends_in_ready();
        if p == Pending::Sync {
            self.skipping = false;
        }
        self.pending.push_back(p);
    }

    /// A RowDescription arrived.
    pub fn row_description(&mut self, cols: Arc<[Column]>) -> ResultStart {
        match self.pending.front().cloned() {
            Some(Pending::DescribeStatement(name)) => {
                self.pending.pop_front();
                self.statement_cols.insert(name, cols);
                ResultStart::None
            }
            Some(Pending::DescribePortal(portal)) => {
                self.pending.pop_front();
                self.portal_cols.insert(portal, cols);
                ResultStart::None
            }
            // A simple query's (next) result set.
            _ => {
                self.streaming = true;
                self.result_columns(&cols);
                ResultStart::Columns(cols)
            }
        }
    }

    /// A DataRow arrived: the columns, when this is the first row of an Execute.
    pub fn data_row(&mut self) -> ResultStart {
        if self.streaming {
            return ResultStart::None;
        }
        self.streaming = true;
        let cols = self.execute_columns();
        if let ResultStart::Columns(c) = &cols {
            self.result_columns(c);
        }
        cols
    }

    /// The columns of the Execute whose first row arrives.
    fn execute_columns(&self) -> ResultStart {
        let Some(Pending::Execute(portal)) = self.pending.front() else {
            return ResultStart::None;
        };
        if let Some(cols) = self.portal_cols.get(portal) {
            return ResultStart::Columns(Arc::clone(cols));
        }
        // Execute without Describe: the statement's columns with the Bind's formats.
        let Some(p) = self.portals.get(portal) else {
            return ResultStart::Columns(Arc::from(Vec::new()));
        };
        let Some(cols) = self.statement_cols.get(&p.statement) else {
            return ResultStart::Columns(Arc::from(Vec::new()));
        };
        let formats = &p.result_formats;
        let cols: Vec<Column> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let format = match formats.len() {
                    0 => 0,
                    1 => formats[0],
                    _ => formats.get(i).copied().unwrap_or(0),
                };
                Column {
                    format,
                    ..c.clone()
                }
            })
            .collect();
        ResultStart::Columns(cols.into())
    }

    /// Any other reply: keeps the expectation queue in step.
    pub fn reply(&mut self, tag: u8) {
        match tag {
            b'1' | b'2' | b'3' | b'n' => {
                if matches!(
                    (tag, self.pending.front()),
                    (b'1', Some(Pending::Parse | Pending::Own(Own::Parse)))
                        | (b'2', Some(Pending::Bind | Pending::Own(Own::Bind)))
                        | (b'3', Some(Pending::Close | Pending::Own(Own::Close)))
                        | (
                            b'n',
                            Some(Pending::DescribeStatement(_) | Pending::DescribePortal(_))
                        )
                ) {
                    self.pending.pop_front();
                }
            }
            b'C' | b'I' | b's' => {
                self.streaming = false;
                if matches!(
                    self.pending.front(),
                    Some(Pending::Execute(_) | Pending::Own(Own::Rows { simple: false, .. }))
                ) {
                    self.pending.pop_front();
                }
            }
            b'E' => {
                self.streaming = false;
                // In the extended protocol the server skips everything up to Sync.
                if !self.pending.front().is_some_and(Pending::ends_in_ready) {
                    while self.pending.front().is_some_and(|p| *p != Pending::Sync) {
                        self.pending.pop_front();
                    }
                    if self.pending.is_empty() {
                        self.skipping = true;
                    }
                }
            }
            b'Z' => {
                self.streaming = false;
                while let Some(p) = self.pending.pop_front() {
                    if p.ends_in_ready() {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    fn cols(format: i16) -> Arc<[Column]> {
        Arc::from(vec![Column {
            name: "c".into(),
            table_oid: 1,
            attnum: 2,
            type_oid: 25,
            format,
        }])
    }

    #[test]
    fn execute_without_describe_uses_statement_columns_and_bind_formats() {
        let mut s = ProtoState::new("x");
        // Parse s1, Describe S s1, Sync.
        s.expect(Pending::Parse);
        s.expect(Pending::DescribeStatement("s1".into()));
        s.expect(Pending::Sync);
        s.reply(b'1');
        s.reply(b't');
        assert_eq!(s.row_description(cols(0)), ResultStart::None);
        s.reply(b'Z');
        // Later: Bind with binary results, Execute, Sync; no Describe.
        s.bound("", "s1", smallvec::smallvec![1]);
        s.expect(Pending::Bind);
        s.expect(Pending::Execute(String::new()));
        s.expect(Pending::Sync);
        s.reply(b'2');
        let ResultStart::Columns(c) = s.data_row() else {
            panic!()
        };
        assert_eq!(c[0].format, 1);
        assert_eq!(s.data_row(), ResultStart::None, "announced once");
        s.reply(b'C');
        s.reply(b'Z');
        assert!(s.pending.is_empty());
    }

    #[test]
    fn errors_skip_to_sync_and_queries_keep_their_results() {
        let mut s = ProtoState::new("x");
        for p in [
            Pending::Parse,
            Pending::Bind,
            Pending::Execute(String::new()),
            Pending::Sync,
            Pending::Query,
        ] {
            s.expect(p);
        }
        s.reply(b'E');
        assert_eq!(s.pending.front(), Some(&Pending::Sync));
        s.reply(b'Z');
        assert_eq!(s.row_description(cols(0)), ResultStart::Columns(cols(0)));
        s.reply(b'C');
        assert!(
            matches!(s.row_description(cols(0)), ResultStart::Columns(_)),
            "second result set of the Query"
        );
        s.reply(b'Z');
        assert!(s.pending.is_empty());
    }
}

/// The statements one reply finished: rarely more than one, so kept inline (no allocation
/// per reply).
pub type Finished = smallvec::SmallVec<[InFlight; 2]>;

/// A Query or Execute on its way: what its `query.done` record will say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// The seq of its `query` record (0: not recorded).
    pub seq: u64,
    /// When it was sent.
    pub started: std::time::Instant,
    /// Rows from its command tags.
    pub rows: u64,
    /// Its error: SQLSTATE and message.
    pub error: Option<(String, String)>,
    /// Whether it is a simple Query (results until ReadyForQuery) or an Execute.
    pub query: bool,
    /// The rule that undid and refused it after it ran (a write over its row limit), or cut
    /// its result off (a read over its limit).
    pub undone_by: Option<String>,
    /// The limits on the rows its results may send, and what was sent.
    pub reads: Option<Box<ReadWatch>>,
    /// What its results sent, kept for its record (a profile with `record_results`).
    pub results: Option<Box<crate::session::results::ResultCapture>>,
}

/// A statement's results counted against its read limits as they are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadWatch {
    /// The limits.
    pub limits: Vec<crate::policy::ReadLimit>,
    /// Its text (for the approval request).
    pub sql: Arc<str>,
    /// Result rows sent to the client so far.
    pub sent: u64,
    /// Limits a person said yes to for this statement (by index).
    pub passed: Vec<bool>,
    /// Rows taken from each budget and not yet sent (by index).
    pub reserved: Vec<u64>,
}

impl ReadWatch {
    /// A watch over `limits`.
    pub fn new(limits: Vec<crate::policy::ReadLimit>, sql: Arc<str>) -> Self {
        let n = limits.len();
        Self {
            limits,
            sql,
            sent: 0,
            passed: vec![false; n],
            reserved: vec![0; n],
        }
    }
}

/// The row count a command tag reports (`SELECT 5`, `INSERT 0 3`, `UPDATE 2`, `COPY 7`).
pub fn tag_rows(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl ProtoState {
    /// The next statement number of this session (audit records pair `query` and
    /// `query.done` by it).
    pub fn next_statement(&mut self) -> u64 {
        self.statement_no += 1;
        self.statement_no
    }

    /// A Query or Execute was sent (call with its `expect`).
    pub fn in_flight(&mut self, seq: u64, query: bool) {
        self.inflight.push_back(InFlight {
            seq,
            started: std::time::Instant::now(),
            rows: 0,
            error: None,
            query,
            undone_by: None,
            reads: None,
            results: self
                .record_results
                .map(|r| Box::new(crate::session::results::ResultCapture::new(r))),
        });
    }

    /// A reply that may finish in-flight statements; returns the finished ones.
    pub fn finish(&mut self, tag: u8, detail: Option<(&str, &str)>, rows: u64) -> Finished {
        let mut done = Finished::new();
        let front_query = self.inflight.front().is_some_and(|f| f.query);
        match tag {
            b'C' | b'I' | b's' => {
                if let Some(f) = self.inflight.front_mut() {
                    f.rows += rows;
                    if !f.query
                        && let Some(f) = self.inflight.pop_front()
                    {
                        done.push(f);
                    }
                }
            }
            b'E' => {
                let error = detail.map(|(c, m)| (c.to_owned(), m.to_owned()));
                if front_query {
                    if let Some(f) = self.inflight.front_mut()
                        && f.undone_by.is_none()
                    {
                        f.error = error;
                    }
                } else {
                    // Extended protocol: the failing Execute and every one skipped up to Sync.
                    let skipped = self
                        .pending
                        .iter()
                        .filter(|p| matches!(p, Pending::Execute(_)))
                        .count();
                    for i in 0..skipped.max(1) {
                        let Some(mut f) = self.inflight.pop_front() else {
                            break;
                        };
                        if f.undone_by.is_some() {
                            done.push(f);
                            continue;
                        }
                        f.error = Some(if i == 0 {
                            error.clone().unwrap_or_default()
                        } else {
                            (
                                "XX000".into(),
                                "skipped after an earlier error in the same batch".into(),
                            )
                        });
                        done.push(f);
                    }
                }
            }
            b'Z' => {
                if front_query && let Some(f) = self.inflight.pop_front() {
                    done.push(f);
                }
            }
            _ => {}
        }
        done
    }
}
