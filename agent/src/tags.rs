//! Which cgroups belong to which workload: the config's matchers, the xattr tags, and the
//! kernel-side state they imply. Pure decisions; [`TagSink`] is the edge to the kernel maps.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::cgroup::{CgroupPath, Found, Glob, is_unit_name, systemd_unit};
use crate::config::WorkloadConfig;
use crate::names::{CgroupId, WorkloadId, WorkloadName};

/// Why a cgroup is tagged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "pattern", rename_all = "snake_case")]
pub enum TagSource {
    /// The `user.pgwarden.workload` xattr on the directory.
    Xattr,
    /// A `systemd_unit` glob of the config.
    SystemdUnit(String),
    /// A `cgroup` glob of the config.
    Cgroup(String),
}

/// A tagged cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tag {
    /// Its path.
    pub path: CgroupPath,
    /// Its workload.
    pub workload: WorkloadName,
    /// Why.
    pub source: TagSource,
}

/// Workload names and their kernel-side numbers, stable for the agent's lifetime.
#[derive(Debug, Default)]
pub struct Registry {
    ids: HashMap<WorkloadName, WorkloadId>,
    names: Vec<WorkloadName>,
}

impl Registry {
    /// The id of `name`, assigning the next one if new.
    pub fn id(&mut self, name: &WorkloadName) -> WorkloadId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.clone());
        let id = WorkloadId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        self.ids.insert(name.clone(), id);
        id
    }

    /// The name of `id`.
    pub fn name(&self, id: WorkloadId) -> Option<&WorkloadName> {
        let index = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.names.get(index)
    }
}

/// The config's workload matchers, compiled once.
#[derive(Debug, Default)]
pub struct Matchers {
    workloads: Vec<WorkloadMatchers>,
}

#[derive(Debug)]
struct WorkloadMatchers {
    name: WorkloadName,
    /// `systemd_unit` globs, on the unit's name.
    units: Vec<Glob>,
    /// `cgroup` globs, on the path relative to the root (a leading `/` is dropped), with the
    /// pattern as written for [`TagSource::Cgroup`].
    cgroups: Vec<(Glob, String)>,
}

impl Matchers {
    /// From the config's workloads, in order (the first match wins). A glob that does not
    /// compile matches nothing (`Config::parse` refuses them, so only a hand-built config
    /// has one).
    pub fn new(workloads: &[WorkloadConfig]) -> Self {
        Self {
            workloads: workloads
                .iter()
                .map(|w| WorkloadMatchers {
                    name: WorkloadName(w.name.clone()),
                    units: w
                        .systemd_unit
                        .iter()
                        .filter_map(|g| Glob::new(g).ok())
                        .collect(),
                    cgroups: w
                        .cgroup
                        .iter()
                        .filter_map(|g| {
                            Some((Glob::new(g.trim_start_matches('/')).ok()?, g.clone()))
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Workload names in config order.
    pub fn names(&self) -> impl Iterator<Item = &WorkloadName> {
        self.workloads.iter().map(|w| &w.name)
    }

    /// The workload whose config matchers select this cgroup itself. A unit glob selects the
    /// unit's own cgroup (its descendants are covered by the kernel's ancestor walk).
    pub fn config_match(&self, path: &CgroupPath) -> Option<(WorkloadName, TagSource)> {
        let name = path.name();
        for w in &self.workloads {
            if is_unit_name(name)
                && systemd_unit(path) == Some(name)
                && let Some(g) = w.units.iter().find(|g| g.is_match(name))
            {
                return Some((
                    w.name.clone(),
                    TagSource::SystemdUnit(g.as_str().to_owned()),
                ));
            }
            if let Some((_, written)) = w.cgroups.iter().find(|(g, _)| g.is_match(path.relative()))
            {
                return Some((w.name.clone(), TagSource::Cgroup(written.clone())));
            }
        }
        None
    }

    /// The tag of one cgroup: its xattr wins over the config.
    pub fn classify(&self, path: &CgroupPath, xattr: Option<&str>) -> Option<Tag> {
        if let Some(name) = xattr {
            return Some(Tag {
                path: path.clone(),
                workload: WorkloadName(name.to_owned()),
                source: TagSource::Xattr,
            });
        }
        self.config_match(path).map(|(workload, source)| Tag {
            path: path.clone(),
            workload,
            source,
        })
    }
}

/// Where tag decisions are applied (the kernel maps; a recorder in tests).
pub trait TagSink {
    /// Tags cgroup `id` with `workload`.
    fn tag(&mut self, id: CgroupId, workload: WorkloadId) -> anyhow::Result<()>;
    /// Untags cgroup `id`.
    fn untag(&mut self, id: CgroupId) -> anyhow::Result<()>;
    /// Makes the kernel tag a cgroup created at `path` with `workload` at mkdir time.
    fn stick(&mut self, path: &CgroupPath, workload: WorkloadId) -> anyhow::Result<()>;
    /// Stops doing that for `path`.
    fn unstick(&mut self, path: &CgroupPath) -> anyhow::Result<()>;
}

/// Most sticky paths kept (the kernel map's size).
pub const MAX_STICKY: usize = 4_096;

/// The agent's tag state: what it has applied, and the index of cgroup ids to paths.
#[derive(Debug, Default)]
pub struct Tagger {
    /// Config matchers.
    pub matchers: Matchers,
    /// Workload names and ids.
    pub registry: Registry,
    applied: BTreeMap<CgroupId, Tag>,
    sticky: BTreeMap<CgroupPath, WorkloadId>,
    index: HashMap<CgroupId, CgroupPath>,
}

impl Tagger {
    /// A tagger for these workloads; config workloads get ids 1.. in order.
    pub fn new(workloads: &[WorkloadConfig]) -> Self {
        let matchers = Matchers::new(workloads);
        let mut registry = Registry::default();
        for name in matchers.names() {
            registry.id(name);
        }
        Self {
            matchers,
            registry,
            ..Self::default()
        }
    }

    /// Applies a full walk of the tree: tags what should be, untags what should not.
    /// A tagged cgroup missing from `found` is kept while `alive` says its directory still
    /// exists: it was created after the walk passed its parent, and the mkdir event tagged it.
    pub fn reconcile(
        &mut self,
        found: &[Found],
        alive: &dyn Fn(&CgroupPath, CgroupId) -> bool,
        sink: &mut dyn TagSink,
    ) -> anyhow::Result<()> {
        let mut want = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for f in found {
            seen.insert(f.id);
            self.index.insert(f.id, f.path.clone());
            if let Some(tag) = self.matchers.classify(&f.path, f.tag.as_deref()) {
                want.insert(f.id, tag);
            }
        }
        self.index
            .retain(|id, path| seen.contains(id) || alive(path, *id));
        let gone: Vec<CgroupId> = self
            .applied
            .iter()
            .filter(|(id, tag)| {
                if seen.contains(id) {
                    !want.contains_key(id)
                } else {
                    !alive(&tag.path, **id)
                }
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            sink.untag(id)?;
            self.applied.remove(&id);
        }
        for (id, tag) in want {
            self.apply(id, tag, sink)?;
        }
        // Sticky paths whose config no longer selects them (a reload) are dropped.
        let stale: Vec<CgroupPath> = self
            .sticky
            .keys()
            .filter(|p| self.matchers.config_match(p).is_none())
            .cloned()
            .collect();
        for p in stale {
            sink.unstick(&p)?;
            self.sticky.remove(&p);
        }
        Ok(())
    }

    /// Takes over the kernel state a previous run left in the pinned maps: its tagged ids are
    /// treated as applied (so the next reconcile untags what is no longer wanted), and its
    /// sticky paths are kept, with this run's workload ids, where the config still selects
    /// them.
    pub fn adopt(
        &mut self,
        tagged: Vec<CgroupId>,
        sticky: Vec<CgroupPath>,
        sink: &mut dyn TagSink,
    ) -> anyhow::Result<()> {
        for id in tagged {
            self.applied.insert(
                id,
                Tag {
                    path: CgroupPath(String::new()),
                    workload: WorkloadName(String::new()),
                    source: TagSource::Xattr,
                },
            );
        }
        for path in sticky {
            match self.matchers.config_match(&path) {
                Some((workload, _)) => {
                    let wid = self.registry.id(&workload);
                    sink.stick(&path, wid)?;
                    self.sticky.insert(path, wid);
                }
                None => sink.unstick(&path)?,
            }
        }
        Ok(())
    }

    /// A cgroup just created (from the kernel's mkdir event).
    pub fn created(
        &mut self,
        id: CgroupId,
        path: CgroupPath,
        sink: &mut dyn TagSink,
    ) -> anyhow::Result<()> {
        self.index.insert(id, path.clone());
        match self.matchers.classify(&path, None) {
            Some(tag) => self.apply(id, tag, sink),
            None => Ok(()),
        }
    }

    fn apply(&mut self, id: CgroupId, tag: Tag, sink: &mut dyn TagSink) -> anyhow::Result<()> {
        let wid = self.registry.id(&tag.workload);
        if self.applied.get(&id) != Some(&tag) {
            sink.tag(id, wid)?;
        }
        if !matches!(tag.source, TagSource::Xattr) && self.sticky.get(&tag.path) != Some(&wid) {
            if self.sticky.len() >= MAX_STICKY
                && let Some(oldest) = self.sticky.keys().next().cloned()
            {
                sink.unstick(&oldest)?;
                self.sticky.remove(&oldest);
            }
            sink.stick(&tag.path, wid)?;
            self.sticky.insert(tag.path.clone(), wid);
        }
        self.applied.insert(id, tag);
        Ok(())
    }

    /// The path of a cgroup id, if the agent has seen it.
    pub fn path_of(&self, id: CgroupId) -> Option<&CgroupPath> {
        self.index.get(&id)
    }

    /// Tagged cgroups, for status.
    pub fn tagged(&self) -> impl Iterator<Item = (&CgroupId, &Tag)> {
        self.applied.iter()
    }

    /// Sticky paths, for status.
    pub fn sticky(&self) -> impl Iterator<Item = &CgroupPath> {
        self.sticky.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        tagged: BTreeMap<CgroupId, WorkloadId>,
        sticky: BTreeMap<CgroupPath, WorkloadId>,
    }

    impl TagSink for Recorder {
        fn tag(&mut self, id: CgroupId, w: WorkloadId) -> anyhow::Result<()> {
            self.tagged.insert(id, w);
            Ok(())
        }
        fn untag(&mut self, id: CgroupId) -> anyhow::Result<()> {
            self.tagged.remove(&id);
            Ok(())
        }
        fn stick(&mut self, p: &CgroupPath, w: WorkloadId) -> anyhow::Result<()> {
            self.sticky.insert(p.clone(), w);
            Ok(())
        }
        fn unstick(&mut self, p: &CgroupPath) -> anyhow::Result<()> {
            self.sticky.remove(p);
            Ok(())
        }
    }

    fn workloads() -> Vec<WorkloadConfig> {
        vec![
            WorkloadConfig {
                name: "payments-mcp".into(),
                systemd_unit: vec!["mcp-*.service".into()],
                cgroup: vec![],
                policy: None,
                profile: None,
                upstream_auth: None,
            },
            WorkloadConfig {
                name: "batch".into(),
                systemd_unit: vec![],
                cgroup: vec!["jobs/*".into()],
                policy: None,
                profile: None,
                upstream_auth: None,
            },
        ]
    }

    fn found(id: u64, path: &str, tag: Option<&str>) -> Found {
        Found {
            path: CgroupPath(path.into()),
            id: CgroupId(id),
            tag: tag.map(str::to_owned),
        }
    }

    #[test]
    fn classifies_by_unit_glob_cgroup_glob_and_xattr() {
        let m = Matchers::new(&workloads());
        let c = |p: &str, x: Option<&str>| {
            m.classify(&CgroupPath(p.into()), x)
                .map(|t| (t.workload.0, t.source))
        };
        assert_eq!(
            c("/system.slice/mcp-payments.service", None),
            Some((
                "payments-mcp".into(),
                TagSource::SystemdUnit("mcp-*.service".into())
            ))
        );
        // Sub-cgroups of the unit are covered by the ancestor walk, not tagged one by one.
        assert_eq!(c("/system.slice/mcp-payments.service/sub", None), None);
        assert_eq!(c("/system.slice/other.service", None), None);
        assert_eq!(
            c("/jobs/a", None),
            Some(("batch".into(), TagSource::Cgroup("jobs/*".into())))
        );
        assert_eq!(c("/jobs/a/b", None), None);
        assert_eq!(
            c("/anything", Some("adhoc")),
            Some(("adhoc".into(), TagSource::Xattr))
        );
        // The xattr wins over the config.
        assert_eq!(c("/jobs/a", Some("adhoc")).unwrap().1, TagSource::Xattr);
    }

    #[test]
    fn reconcile_tags_untags_and_remembers_paths() {
        let mut t = Tagger::new(&workloads());
        let mut sink = Recorder::default();
        let dead = |_: &CgroupPath, _: CgroupId| false;
        t.reconcile(
            &[
                found(1, "/", None),
                found(10, "/jobs/a", None),
                found(11, "/x", Some("adhoc")),
            ],
            &dead,
            &mut sink,
        )
        .unwrap();
        assert_eq!(sink.tagged.get(&CgroupId(10)), Some(&WorkloadId(2)));
        assert_eq!(sink.tagged.get(&CgroupId(11)), Some(&WorkloadId(3)));
        assert_eq!(
            sink.sticky.keys().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            vec!["/jobs/a"]
        );

        // The unit restarts: same path, new id. The old id is untagged; the path stays sticky.
        t.reconcile(
            &[found(1, "/", None), found(12, "/jobs/a", None)],
            &dead,
            &mut sink,
        )
        .unwrap();
        assert_eq!(
            sink.tagged.keys().copied().collect::<Vec<_>>(),
            vec![CgroupId(12)]
        );
        assert!(sink.sticky.contains_key(&CgroupPath("/jobs/a".into())));

        // A cgroup created after the walk passed its parent, and tagged by its mkdir event,
        // survives a reconcile that did not see it.
        t.created(CgroupId(20), CgroupPath("/jobs/b".into()), &mut sink)
            .unwrap();
        let alive = |p: &CgroupPath, _: CgroupId| p.0 == "/jobs/b";
        t.reconcile(
            &[found(1, "/", None), found(12, "/jobs/a", None)],
            &alive,
            &mut sink,
        )
        .unwrap();
        assert_eq!(sink.tagged.get(&CgroupId(20)), Some(&WorkloadId(2)));
        t.reconcile(
            &[found(1, "/", None), found(12, "/jobs/a", None)],
            &dead,
            &mut sink,
        )
        .unwrap();
        assert!(!sink.tagged.contains_key(&CgroupId(20)));

        // A new cgroup announced by the kernel is classified at once.
        t.created(
            CgroupId(13),
            CgroupPath("/system.slice/mcp-x.service".into()),
            &mut sink,
        )
        .unwrap();
        assert_eq!(sink.tagged.get(&CgroupId(13)), Some(&WorkloadId(1)));
        assert_eq!(
            t.path_of(CgroupId(13)).unwrap().0,
            "/system.slice/mcp-x.service"
        );
        t.created(
            CgroupId(14),
            CgroupPath("/system.slice/other.service".into()),
            &mut sink,
        )
        .unwrap();
        assert!(!sink.tagged.contains_key(&CgroupId(14)));
    }

    #[test]
    fn registry_ids_are_stable() {
        let mut r = Registry::default();
        let a = r.id(&WorkloadName("a".into()));
        let b = r.id(&WorkloadName("b".into()));
        assert_eq!(r.id(&WorkloadName("a".into())), a);
        assert_ne!(a, b);
        assert_eq!(r.name(b).unwrap().0, "b");
        assert!(r.name(WorkloadId(0)).is_none());
    }
}
