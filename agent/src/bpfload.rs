//! Loads the Unix socket programs (`pgwarden-unix`), which aya 0.14 cannot: they call kfuncs
//! (aya 0.14 resolves no `.ksyms`) and attach at `cgroup/connect_unix` and
//! `cgroup/getpeername_unix` (attach types it does not know). This is the small part of a
//! loader they need: copy a program section, append `.text` for the compiler's helpers
//! (`memset`), point map loads at the agent's map fds by symbol name, and turn calls to
//! undefined symbols into kfunc calls by their id in the running kernel's BTF.
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};

use anyhow::{Context as _, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex};

use crate::btf::KernelBtf;

const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
const OP_CALL: u8 = 0x85;
const OP_LD_IMM64: u8 = 0x18;

/// One 8-byte eBPF instruction.
#[derive(Clone, Copy)]
struct Insn([u8; 8]);

impl Insn {
    fn code(self) -> u8 {
        self.0[0]
    }
    fn imm(self) -> i32 {
        i32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }
    fn set_imm(&mut self, imm: i32) {
        self.0[4..8].copy_from_slice(&imm.to_le_bytes());
    }
    fn set_src(&mut self, src: u8) {
        self.0[1] = (self.0[1] & 0x0f) | (src << 4);
    }
    fn set_off(&mut self, off: i16) {
        self.0[2..4].copy_from_slice(&off.to_le_bytes());
    }
}

/// A program ready for the kernel: its instructions, relocated.
pub struct Relocated {
    /// The section's function name.
    pub name: String,
    /// Instructions, as the kernel takes them.
    pub insns: Vec<u64>,
}

fn insns_of(data: &[u8]) -> anyhow::Result<Vec<Insn>> {
    if !data.len().is_multiple_of(8) {
        bail!("section length {} is not a multiple of 8", data.len());
    }
    Ok(data
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            Insn(b)
        })
        .collect())
}

/// Relocates the program in section `section` of `elf`. `maps` gives the fd of every map the
/// program may name; `btf` resolves kfuncs.
pub fn relocate(
    elf: &[u8],
    section: &str,
    maps: &HashMap<&str, BorrowedFd<'_>>,
    btf: &KernelBtf,
) -> anyhow::Result<Relocated> {
    use std::os::fd::AsRawFd as _;
    let file = object::File::parse(elf).context("parsing the Unix programs' ELF object")?;
    let sec = file
        .section_by_name(section)
        .ok_or_else(|| anyhow!("section {section} missing from the Unix programs' object"))?;
    let mut insns = insns_of(sec.data()?)?;
    let text = file.section_by_name(".text");
    let text_index = text.as_ref().map(object::ObjectSection::index);
    let text_data = match &text {
        Some(t) => t.data()?,
        None => &[],
    };
    // The functions of `.text` (the compiler's memset and friends): (start, size) in bytes.
    let text_funcs: Vec<(u64, u64)> = file
        .symbols()
        .filter(|s| s.section_index() == text_index && s.kind() == object::SymbolKind::Text)
        .map(|s| (s.address(), s.size()))
        .collect();
    let name = file
        .symbols()
        .find(|s| s.section_index() == Some(sec.index()) && s.kind() == object::SymbolKind::Text)
        .and_then(|s| s.name().ok().map(str::to_owned))
        .unwrap_or_else(|| section.rsplit('/').next().unwrap_or(section).to_owned());
    // Each called `.text` function is appended once, after the program (the verifier rejects
    // unreachable instructions, so uncalled ones stay out): its start in bytes -> its index.
    let mut appended: HashMap<u64, usize> = HashMap::new();
    let mut pending: Vec<(usize, object::Relocation)> = sec
        .relocations()
        .map(|(o, r)| (o as usize / 8, r))
        .collect();
    let mut i = 0;
    while i < pending.len() {
        let (at, ref rel) = pending[i];
        let RelocationTarget::Symbol(sym_index) = rel.target() else {
            bail!("{section}: relocation at instruction {at} has no symbol");
        };
        let sym = file.symbol_by_index(sym_index)?;
        let sym_name = sym.name().unwrap_or("");
        let code = insns
            .get(at)
            .ok_or_else(|| anyhow!("{section}: relocation past the end at {at}"))?
            .code();
        match (code, sym.section_index()) {
            (OP_LD_IMM64, Some(_)) => {
                let fd = maps
                    .get(sym_name)
                    .ok_or_else(|| anyhow!("{section}: map {sym_name} is not provided"))?;
                insns[at].set_src(BPF_PSEUDO_MAP_FD);
                insns[at].set_imm(fd.as_raw_fd());
            }
            (OP_CALL, None) => {
                let id = btf.func_id(sym_name).ok_or_else(|| {
                    anyhow!(
                        "kfunc {sym_name} is not in this kernel's BTF (Linux 6.7 or newer needed)"
                    )
                })?;
                insns[at].set_src(BPF_PSEUDO_KFUNC_CALL);
                insns[at].set_off(0);
                insns[at].set_imm(i32::try_from(id).context("BTF id")?);
            }
            (OP_CALL, Some(idx)) if Some(idx) == text_index => {
                let target = if sym.kind() == object::SymbolKind::Section {
                    // Section-relative: the immediate holds the target's index minus one.
                    u64::try_from(i64::from(insns[at].imm()) + 1).context("call target")? * 8
                } else {
                    sym.address()
                };
                let &(start, size) = text_funcs
                    .iter()
                    .find(|(a, n)| *a <= target && target < a + n)
                    .ok_or_else(|| {
                        anyhow!("{section}: call into .text at {target} is in no function")
                    })?;
                let base = match appended.get(&start) {
                    Some(&b) => b,
                    None => {
                        let b = insns.len();
                        let (s0, s1) = (start as usize, (start + size) as usize);
                        insns.extend(insns_of(text_data.get(s0..s1).context(".text bounds")?)?);
                        // The function's own relocations, shifted to where it now lies.
                        if let Some(t) = &text {
                            for (o, r) in t.relocations() {
                                if o >= start && o < start + size {
                                    pending.push((b + (o - start) as usize / 8, r));
                                }
                            }
                        }
                        appended.insert(start, b);
                        b
                    }
                };
                let dest = base + ((target - start) / 8) as usize;
                insns[at].set_src(BPF_PSEUDO_CALL);
                insns[at]
                    .set_imm(i32::try_from(dest as i64 - at as i64 - 1).context("call offset")?);
            }
            (code, idx) => bail!(
                "{section}: unsupported relocation of instruction 0x{code:02x} against {sym_name} (section {:?})",
                idx.map(|SectionIndex(i)| i)
            ),
        }
        i += 1;
    }
    Ok(Relocated {
        name,
        insns: insns.into_iter().map(|i| u64::from_le_bytes(i.0)).collect(),
    })
}

/// Relocates and loads the program in `section` as a cgroup sock_addr program for
/// `attach_type`; the error carries the verifier's log.
pub fn load_sock_addr(
    elf: &[u8],
    section: &str,
    attach_type: u32,
    maps: &HashMap<&str, BorrowedFd<'_>>,
    btf: &KernelBtf,
) -> anyhow::Result<OwnedFd> {
    let prog = relocate(elf, section, maps, btf)?;
    agent_sys::prog_load(
        agent_sys::PROG_TYPE_CGROUP_SOCK_ADDR,
        attach_type,
        &prog.name,
        &prog.insns,
        "Dual MIT/GPL",
    )
    .map_err(|e| anyhow!("the kernel refused {section}: {e}"))
}
