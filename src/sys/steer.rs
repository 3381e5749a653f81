//! Which TUN queue the kernel puts a packet in: TCP in queue 0, everything
//! else (calls, ICMP, DNS, QUIC) in queue 1.
//!
//! When mpvr's own CPU is the bottleneck (a small router on a fast link,
//! or the namespace bench), the kernel queues what the applications send
//! in the TUN's ring until mpvr reads it; one TCP stream keeps that ring
//! full (the TUN frees a packet's socket accounting as it queues it, so
//! TCP's small queues do not bound it), and a call's packet waited there
//! behind up to 500 super-packets of 64 KiB: milliseconds. With two
//! queues and this steering program, real-time packets land in a queue of
//! their own that has its own reader, and wait behind no bulk.
//!
//! The program is eBPF of the socket-filter type, attached with
//! `TUNSETSTEERINGEBPF` (Linux 4.16): its return value is the queue. It
//! reads the IP version, then the IPv4 protocol or the IPv6 next header,
//! and returns 0 for TCP and 1 otherwise (an IPv6 packet with extension
//! headers goes to queue 1). Twelve instructions, so they are written out
//! here rather than compiled with a toolchain.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One eBPF instruction as the kernel reads it (`struct bpf_insn`).
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
/// `r_dst = r_src` (BPF_ALU64 | BPF_MOV | BPF_X).
const MOV64_REG: u8 = 0x07 | 0xb0 | 0x08;
/// `r_dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const MOV64_IMM: u8 = 0x07 | 0xb0;
/// `r_dst >>= imm` (BPF_ALU64 | BPF_RSH | BPF_K).
const RSH64_IMM: u8 = 0x07 | 0x70;
/// `r0 = packet byte at imm` (BPF_LD | BPF_ABS | BPF_B; the packet is
/// the context in r6; past its end the program returns 0).
const LD_ABS_B: u8 = 0x20 | 0x10;
/// `if r_dst == imm goto +off` (BPF_JMP | BPF_JEQ | BPF_K).
const JEQ_IMM: u8 = 0x05 | 0x10;
/// `goto +off` (BPF_JMP | BPF_JA).
const JA: u8 = 0x05;
/// `return r0` (BPF_JMP | BPF_EXIT).
const EXIT: u8 = 0x05 | 0x90;

const TCP: i32 = 6;

/// TCP to queue 0, the rest to queue 1. A jump's target is the next
/// instruction plus its offset.
const PROGRAM: [Insn; 12] = [
    insn(MOV64_REG, 6, 1, 0, 0), // r6 = the packet (LD_ABS reads it)
    insn(LD_ABS_B, 0, 0, 0, 0),  // r0 = version and header length
    insn(RSH64_IMM, 0, 0, 0, 4), // r0 = IP version
    insn(JEQ_IMM, 0, 0, 2, 6),   // IPv6: to 6
    insn(LD_ABS_B, 0, 0, 0, 9),  // IPv4 protocol
    insn(JA, 0, 0, 1, 0),        // to 7
    insn(LD_ABS_B, 0, 0, 0, 6),  // IPv6 next header
    insn(JEQ_IMM, 0, 0, 2, TCP), // TCP: to 10
    insn(MOV64_IMM, 0, 0, 0, 1), // anything else: queue 1
    insn(EXIT, 0, 0, 0, 0),
    insn(MOV64_IMM, 0, 0, 0, 0), // TCP: queue 0
    insn(EXIT, 0, 0, 0, 0),
];

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// `union bpf_attr` as `BPF_PROG_LOAD` reads it, up to the program's name;
/// the kernel takes a shorter attribute than its own (the rest is zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Load the program; its file descriptor.
fn load() -> io::Result<OwnedFd> {
    let license = c"MIT OR Apache-2.0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"mpvr_steer");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoad::default()
    };
    // SAFETY: bpf(2) with a valid attribute of the size given; the
    // instructions and the license outlive the call (statics), and the
    // kernel copies what it keeps.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>() as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(io::Error::new(
                e.kind(),
                format!("{e}: loading its eBPF program needs CAP_BPF (Linux 5.8 and later) or CAP_SYS_ADMIN"),
            ));
        }
        return Err(e);
    }
    // SAFETY: a new descriptor the kernel just gave this process alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Attach the steering program to the multi-queue TUN that `queue` is a
/// queue of (any queue: the program is the device's). The device keeps the
/// program; closing the device drops it.
pub fn attach(queue: &impl AsRawFd) -> io::Result<()> {
    let prog = load()?;
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: TUNSETSTEERINGEBPF on a TUN descriptor reads one int.
    let r = unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETSTEERINGEBPF as _, &fd as *const libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program run by hand the way the kernel runs it, on the packets
    /// that matter: every jump lands where its comment says.
    fn run(packet: &[u8]) -> i64 {
        let mut r = [0i64; 11];
        let mut pc = 0usize;
        loop {
            let i = PROGRAM[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                MOV64_REG => r[dst] = r[src],
                MOV64_IMM => r[dst] = i64::from(i.imm),
                RSH64_IMM => r[dst] = ((r[dst] as u64) >> i.imm) as i64,
                LD_ABS_B => match packet.get(i.imm as usize) {
                    Some(b) => r[0] = i64::from(*b),
                    None => return 0,
                },
                JEQ_IMM => {
                    if r[dst] == i64::from(i.imm) {
                        pc = (pc as i64 + i64::from(i.off)) as usize;
                    }
                }
                JA => pc = (pc as i64 + i64::from(i.off)) as usize,
                EXIT => return r[0],
                other => panic!("opcode {other:#x} not expected"),
            }
        }
    }

    fn ipv4(proto: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = proto;
        p
    }

    fn ipv6(next: u8) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[6] = next;
        p
    }

    #[test]
    fn tcp_goes_to_queue_0_and_the_rest_to_queue_1() {
        assert_eq!(run(&ipv4(6)), 0);
        assert_eq!(run(&ipv6(6)), 0);
        for proto in [1, 17, 58, 132] {
            assert_eq!(run(&ipv4(proto)), 1, "IPv4 protocol {proto}");
            assert_eq!(run(&ipv6(proto)), 1, "IPv6 next header {proto}");
        }
        // A hop-by-hop header in front of TCP: not looked through.
        assert_eq!(run(&ipv6(0)), 1);
        // Too short to say: what the kernel does past the end (queue 0).
        assert_eq!(run(&[0x45]), 0);
    }

    #[test]
    fn instructions_have_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<ProgLoad>(), 64);
        // mov r6, r1: destination 6 in the low nibble, source 1 in the high.
        assert_eq!(PROGRAM[0].regs, 0x16);
    }
}
