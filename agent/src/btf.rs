//! The running kernel's BTF (`/sys/kernel/btf/vmlinux`), read for the two facts the Unix
//! socket programs need: a kfunc's BTF id, and where a field sits in a kernel struct.
//! Hand-written (about a hundred lines of a stable, documented format) because aya-obj parses
//! BTF but keeps struct members private, and btf-rs is LGPL.
use std::collections::HashMap;

use anyhow::{Context as _, bail};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

/// One type's header and, for structs and unions, its members (name, bit offset).
struct Type {
    kind: u32,
    name: u32,
    members: Vec<(u32, u32)>,
}

/// The parsed type table.
pub struct KernelBtf {
    strings: Vec<u8>,
    types: Vec<Type>,
    by_name: HashMap<(u32, String), u32>,
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let bytes = b
        .get(at..at + 4)
        .context("BTF is truncated")?
        .try_into()
        .context("BTF is truncated")?;
    Ok(u32::from_le_bytes(bytes))
}

impl KernelBtf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> anyhow::Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("reading {path} (a kernel built with CONFIG_DEBUG_INFO_BTF)")
        })?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    /// Parses raw BTF (little endian, as on x86_64 and arm64).
    pub fn parse(data: &[u8]) -> anyhow::Result<Self> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("type section out of bounds")?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("string section out of bounds")?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_bytes.len() {
            let name = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                4 | 5 => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        let off = u32_at(types_bytes, base + 8)?;
                        let off = if kind_flag { off & 0x00ff_ffff } else { off };
                        members.push((u32_at(types_bytes, base)?, off));
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
                15 | 19 => vlen * 12,      // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
                other => bail!("unknown BTF kind {other}"),
            };
            at += extra;
            types.push(Type {
                kind,
                name,
                members,
            });
        }
        let mut this = Self {
            strings,
            types,
            by_name: HashMap::new(),
        };
        for (id, t) in this.types.iter().enumerate().skip(1) {
            if matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_FUNC) {
                let name = this.string(t.name).to_owned();
                this.by_name
                    .entry((t.kind, name))
                    .or_insert(u32::try_from(id).unwrap_or(u32::MAX));
            }
        }
        Ok(this)
    }

    fn string(&self, off: u32) -> &str {
        let start = off as usize;
        let rest = self.strings.get(start..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The BTF id of the kernel function `name` (a kfunc).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(&(KIND_FUNC, name.to_owned())).copied()
    }

    /// The byte offset of `member` in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = *self.by_name.get(&(KIND_STRUCT, name.to_owned()))?;
        let t = self.types.get(id as usize)?;
        t.members
            .iter()
            .find(|(n, _)| self.string(*n) == member)
            .map(|(_, bits)| bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_kernel() {
        let Ok(btf) = KernelBtf::from_sys_fs() else {
            panic!("this test needs /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)");
        };
        // Layouts fixed by the ABI, and the one the Unix programs depend on.
        assert_eq!(btf.member_offset("sockaddr_un", "sun_path"), Some(2));
        assert_eq!(btf.member_offset("sockaddr_in", "sin_port"), Some(2));
        assert_eq!(btf.member_offset("bpf_sock_addr_kern", "uaddr"), Some(8));
        assert!(btf.func_id("bpf_cast_to_kern_ctx").is_some());
        assert!(btf.func_id("no_such_function_anywhere").is_none());
        assert!(btf.member_offset("sockaddr_un", "no_such_member").is_none());
    }

    #[test]
    fn refuses_garbage() {
        assert!(KernelBtf::parse(b"not btf at all, not at all").is_err());
        let mut truncated = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        truncated.truncate(100);
        assert!(KernelBtf::parse(&truncated).is_err());
    }
}
