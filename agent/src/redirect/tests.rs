//! The redirect's unit tests: keys, Unix rules, event decoding, and the kernel contract (the
//! embedded objects' maps against `agent_common::maps`, and the Unix programs' relocation).
use std::path::{Path, PathBuf};

use agent_common::maps::{self as kernel_maps, MapKind, MapSpec};
use agent_common::{
    AttachEvent, CGROUP_PATH_LEN, CgroupEvent, PathBuf as KernelPath, UNIX_ALLOW_SOCKET,
    UNIX_MATCH_DIR, UNIX_MATCH_SOCKET,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::preflight::unix_preflight;
use super::{
    EBPF_OBJECT, EBPF_UNIX_OBJECT, decode_attach_event, decode_event, tuple_key, unix_rules,
};
use crate::btf::KernelBtf;
use crate::names::CgroupId;

#[test]
fn tuple_keys_normalise_v4_to_mapped() {
    let k = tuple_key(
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:15432".parse().unwrap(),
        7,
    );
    assert_eq!(&k.client_addr[10..], &[0xff, 0xff, 127, 0, 0, 1]);
    assert_eq!(k.client_port, 40000);
    assert_eq!(k.server_port, 15432);
    let k6 = tuple_key(
        "[::ffff:127.0.0.1]:40000".parse().unwrap(),
        "[::ffff:127.0.0.1]:15432".parse().unwrap(),
        7,
    );
    assert_eq!(k, k6);
}

#[test]
fn unix_rules_are_prefixes_and_intercept_wins() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let rules = unix_rules(
        &[link.clone(), PathBuf::from("/srv/pg/.s.PGSQL.6432")],
        &[
            PathBuf::from("/run/x.sock"),
            PathBuf::from("/srv/pg/.s.PGSQL.6432"),
        ],
    );
    let has = |bytes: &[u8], rule: u32| rules.iter().any(|(b, r)| b == bytes && *r == rule);
    let dir_rule = |p: &Path| {
        let mut b = p.as_os_str().as_encoded_bytes().to_vec();
        b.extend_from_slice(b"/.s.PGSQL.");
        b
    };
    // The directory as configured and as it really is.
    assert!(has(&dir_rule(&link), UNIX_MATCH_DIR), "{rules:?}");
    assert!(has(
        &dir_rule(&std::fs::canonicalize(&real).unwrap()),
        UNIX_MATCH_DIR
    ));
    assert!(has(b"/run/x.sock\0", UNIX_ALLOW_SOCKET));
    // The same socket allowed and intercepted: intercepted.
    assert!(has(b"/srv/pg/.s.PGSQL.6432\0", UNIX_MATCH_SOCKET));
    assert!(!has(b"/srv/pg/.s.PGSQL.6432\0", UNIX_ALLOW_SOCKET));
    // A trailing slash is the same directory.
    let again = unix_rules(&[PathBuf::from("/var/lib/x/")], &[]);
    assert_eq!(again[0].0, b"/var/lib/x/.s.PGSQL.".to_vec());
    // The root directory.
    let root = unix_rules(&[PathBuf::from("/")], &[]);
    assert_eq!(root[0].0, b"/.s.PGSQL.".to_vec());
}

#[test]
fn the_unix_programs_relocate_against_this_kernel() {
    let btf = KernelBtf::from_sys_fs().expect("this test needs /sys/kernel/btf/vmlinux");
    if let Err(missing) = unix_preflight(&btf) {
        panic!("this kernel lacks the Unix socket hooks (Linux 6.7+): {missing:?}");
    }
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsFd::as_fd(&null);
    let maps: std::collections::HashMap<&str, std::os::fd::BorrowedFd<'_>> =
        kernel_maps::UNIX_PROGRAMS
            .iter()
            .map(|m| (m.name, fd))
            .collect();
    for section in ["cgroup/connect_unix", "cgroup/getpeername_unix"] {
        let prog = crate::bpfload::relocate(EBPF_UNIX_OBJECT, section, &maps, &btf).unwrap();
        assert!(!prog.insns.is_empty());
        // Every call is resolved: to a helper (src 0), a kfunc (2) or a local function (1)
        // whose target lies inside the program.
        for (i, insn) in prog.insns.iter().enumerate() {
            let b = insn.to_le_bytes();
            if b[0] != 0x85 {
                continue;
            }
            let imm = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            match b[1] >> 4 {
                0 => assert!(imm > 0, "{section}: helper call {imm} at {i}"),
                1 => {
                    let target = i as i64 + 1 + i64::from(imm);
                    assert!(
                        (0..prog.insns.len() as i64).contains(&target),
                        "{section}: call at {i} to {target}"
                    );
                }
                2 => assert!(
                    btf.func_id("bpf_sock_addr_set_sun_path") == Some(imm as u32)
                        || btf.func_id("bpf_cast_to_kern_ctx") == Some(imm as u32)
                ),
                other => panic!("{section}: call with src {other} at {i}"),
            }
        }
    }
    // A map the program names but the caller does not provide is an error, not a guess.
    let none = std::collections::HashMap::new();
    assert!(
        crate::bpfload::relocate(EBPF_UNIX_OBJECT, "cgroup/connect_unix", &none, &btf).is_err()
    );
}

#[test]
fn decodes_events() {
    let mut event = CgroupEvent {
        id: 42,
        sticky_workload: 3,
        path_len: 6,
        path: KernelPath::zeroed(),
    };
    event.path.bytes[..6].copy_from_slice(b"/a/b.c");
    let bytes = event.as_bytes();
    let (id, path, sticky) = decode_event(bytes).unwrap();
    assert_eq!((id, path.0.as_str(), sticky), (CgroupId(42), "/a/b.c", 3));
    assert!(decode_event(&bytes[..10]).is_none());
    // A length past the path buffer is not trusted.
    event.path_len = u32::try_from(CGROUP_PATH_LEN + 1).unwrap();
    assert!(decode_event(event.as_bytes()).is_none());

    let attach = AttachEvent {
        cgroup_id: 42,
        pid: 7,
        pad: 0,
    };
    assert_eq!(decode_attach_event(attach.as_bytes()), Some(attach));
    assert_eq!(decode_attach_event(&attach.as_bytes()[..15]), None);
}

/// A legacy map definition as aya-ebpf writes it into an object's `maps` section
/// (`struct bpf_map_def`, little endian: the objects are for bpfel).
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct BpfMapDef {
    map_type: U32,
    key_size: U32,
    value_size: U32,
    max_entries: U32,
    map_flags: U32,
    id: U32,
    pinning: U32,
}

/// The maps an object declares, as the kernel will be told them, by symbol name.
fn maps_of(elf: &[u8]) -> Vec<MapSpec> {
    let file = object::File::parse(elf).expect("the embedded object is an ELF file");
    assert!(
        file.section_by_name(".maps").is_none(),
        "BTF-defined maps (.maps) are outside the contract this test checks"
    );
    let section = file.section_by_name("maps").expect("a maps section");
    let data = section.data().unwrap();
    let mut found: Vec<MapSpec> = file
        .symbols()
        .filter(|s| s.section_index() == Some(section.index()))
        .map(|s| {
            let name = s.name().unwrap();
            let at = usize::try_from(s.address()).unwrap();
            let (def, _) = BpfMapDef::read_from_prefix(&data[at..])
                .unwrap_or_else(|_| panic!("{name}: a truncated map definition"));
            assert_eq!(def.pinning.get(), 0, "{name}: the agent pins maps itself");
            assert_eq!(def.id.get(), 0, "{name}");
            let kind = [
                MapKind::Hash,
                MapKind::Array,
                MapKind::PerCpuArray,
                MapKind::LruHash,
                MapKind::LpmTrie,
                MapKind::RingBuf,
            ]
            .into_iter()
            .find(|k| *k as u32 == def.map_type.get())
            .unwrap_or_else(|| panic!("{name}: map type {} is not in the contract", def.map_type));
            MapSpec {
                name: String::leak(name.to_owned()),
                kind,
                key_size: def.key_size.get(),
                value_size: def.value_size.get(),
                max_entries: def.max_entries.get(),
                flags: def.map_flags.get(),
            }
        })
        .collect();
    found.sort_by_key(|m| m.name);
    found
}

/// Every map of both embedded objects is the one agent-common defines (name, type, key and
/// value size, capacity, flags), and neither object has a map agent-common does not define:
/// a struct or a capacity changed on one side only fails here.
#[test]
fn the_objects_maps_are_the_contract() {
    for (object, elf, contract) in [
        ("pgwarden", EBPF_OBJECT, &kernel_maps::ALL[..]),
        (
            "pgwarden-unix",
            EBPF_UNIX_OBJECT,
            &kernel_maps::UNIX_PROGRAMS[..],
        ),
    ] {
        let found = maps_of(elf);
        let mut want = contract.to_vec();
        want.sort_by_key(|m| m.name);
        for m in &found {
            let Some(def) = contract.iter().find(|d| d.name == m.name) else {
                panic!(
                    "{object}: map {} is not defined in agent_common::maps: {m:?}",
                    m.name
                );
            };
            assert_eq!(def, m, "{object}: map {} differs from agent-common", m.name);
        }
        for d in &want {
            assert!(
                found.iter().any(|m| m.name == d.name),
                "{object}: agent-common's map {} is missing from the object",
                d.name
            );
        }
        assert_eq!(found, want, "{object}");
    }
}
