//! Network namespaces with a veth pair to the host, standing in for containers and for other
//! machines (`ip netns`; 10.231.0.0/16).
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{TestCgroup, run_ok};

/// A network namespace with a veth pair to the host: host end `10.231.N.1/30`, namespace end
/// `10.231.N.2/30`, loopback up. Removed on drop.
pub struct TestNetns {
    name: String,
    host_if: String,
    /// The host end's address.
    pub host_ip: String,
    /// The namespace end's address.
    pub ns_ip: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl TestNetns {
    /// Makes one.
    ///
    /// # Panics
    ///
    /// When `ip` fails.
    #[must_use]
    pub fn create() -> TestNetns {
        // A subnet per test process and namespace, so parallel runs never collide.
        let n = (std::process::id() % 200) * 8 + NEXT.fetch_add(1, Ordering::Relaxed) % 8;
        let (hi, lo) = (n / 64, (n % 64) * 4);
        let name = format!("pgw-e2e-{}-{n}", std::process::id());
        let host_if = format!("pgw{n}h");
        let ns_if = format!("pgw{n}n");
        let host_ip = format!("10.231.{hi}.{}", lo + 1);
        let ns_ip = format!("10.231.{hi}.{}", lo + 2);
        ip(&["netns", "add", &name]);
        let this = TestNetns {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        ip(&[
            "link",
            "add",
            &this.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &this.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", this.host_ip),
            "dev",
            &this.host_if,
        ]);
        ip(&["link", "set", &this.host_if, "up"]);
        let ns = |args: &[&str]| {
            let mut full = vec!["-n", this.name.as_str()];
            full.extend_from_slice(args);
            ip(&full);
        };
        ns(&["addr", "add", &format!("{}/30", this.ns_ip), "dev", &ns_if]);
        ns(&["link", "set", &ns_if, "up"]);
        ns(&["link", "set", "lo", "up"]);
        this
    }

    /// Its nsfs file under /run/netns.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace's id as pgwarden reports it: the inode of its nsfs file.
    #[must_use]
    pub fn id(&self) -> u64 {
        fs::metadata(self.path())
            .expect("the namespace's nsfs file")
            .ino()
    }

    /// `program` inside this namespace, moved into `cg` (when given) from inside it, so the
    /// kernel reports the move from the namespace: `nsenter --net=... sh -c 'echo 0 >
    /// CG/cgroup.procs && exec "$@"'`.
    #[must_use]
    pub fn command(&self, cg: Option<&TestCgroup>, program: &str) -> Command {
        self.command_in(cg, program, false)
    }

    /// [`TestNetns::command`], tagged, that starts `program` only once the agent listens in
    /// the namespace (its abstract socket is there, polled for at most 10 s). The agent opens
    /// its listeners when the kernel reports the first tagged process in a namespace, within
    /// milliseconds; a connect before that is refused, never direct (shown with the agent
    /// down in `namespace_listeners_close_...`), and a test must not race it.
    #[must_use]
    pub fn command_served(&self, cg: &TestCgroup, program: &str) -> Command {
        self.command_in(Some(cg), program, true)
    }

    /// [`TestNetns::command`] in `cg`, waiting for the agent's listener first when `wait`.
    #[must_use]
    pub fn command_in(&self, cg: Option<&TestCgroup>, program: &str, wait: bool) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()));
        let wait = if wait {
            concat!(
                r#"i=0; until grep -q '@pgwarden/' /proc/net/unix; do i=$((i+1)); "#,
                r#"[ $i -gt 500 ] && echo 'the agent never listened in this namespace' >&2 && exit 3; "#,
                r#"sleep 0.02; done; "#
            )
        } else {
            ""
        };
        match cg {
            Some(cg) => {
                cmd.args([
                    "sh",
                    "-c",
                    &format!(r#"echo 0 > "$0/cgroup.procs" && {wait}exec "$@""#),
                ])
                .arg(&cg.path)
                .arg(program);
            }
            None => {
                cmd.arg(program);
            }
        }
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
