"""Translate a classic BPF program (libpcap's output) into eBPF, ahead of kstap's own code.

A socket holds one filter: to put the in-kernel flow table behind the user's expression, the
expression's classic program is rewritten as eBPF, the way the kernel itself converts classic
filters (net/core/filter.c, bpf_convert_filter): A is R0, X is R7, the 16 scratch words live on
the stack, R6 holds the sk_buff. An accepting ``ret #k`` becomes a jump to a label the caller
defines; ``ret #0`` ends the program. Comparisons use the 32-bit jump class (JMP32), since classic
BPF compares 32-bit unsigned values and eBPF's 64-bit jumps would sign-extend the constant.
Ancillary loads (``SKF_AD_*``) become reads of ``struct __sk_buff`` fields; those without a field
raise :class:`Untranslatable` and the caller keeps the classic path.
"""

from __future__ import annotations

from collections.abc import Sequence

from kstap.filters import ebpf_asm as e

Insn = tuple[int, int, int, int]

SKF_AD_OFF = 0xFFFFF000
# SKF_AD_* → offset of the matching struct __sk_buff field (include/uapi/linux/bpf.h)
_AD_FIELDS = {4: 4, 8: 40, 20: 8, 24: 12, 32: 68, 44: 24, 48: 20, 60: 28}
"""pkttype, ifindex, mark, queue, rxhash, vlan_tci, vlan_present, vlan_tpid."""
_AD_PROTOCOL = 0
SCRATCH_BASE = -128
"""M[i] is the 32-bit word at fp-128+4i (so fp-64..-1 stay free for the code that follows)."""

A, X, TMP = e.R0, e.R7, e.R9


class Untranslatable(ValueError):
    """The classic program uses something eBPF socket filters cannot express here."""


def _mem(i: int) -> int:
    return SCRATCH_BASE + 4 * i


def translate(insns: Sequence[Insn], asm: e.Asm, accept: str, prefix: str = "c") -> None:
    """Append ``insns`` (classic BPF) to ``asm``; an accepting return jumps to ``accept``.

    Expects R6 = context. Labels are ``{prefix}{pc}``.
    """
    if any(code & 0x07 in (0x02, 0x03) or code in (0x60, 0x61) for code, _, _, _ in insns):
        for i in range(0, 16, 2):  # the verifier wants every stack byte written before it is read
            asm.st(e.DW, e.FP, _mem(i), 0)
    asm.mov64(A, 0)
    asm.mov64(X, 0)
    n = len(insns)
    for pc, (code, jt, jf, k) in enumerate(insns):
        asm.label(f"{prefix}{pc}")
        cls = code & 0x07
        if cls == 0x00:  # LD
            _ld(asm, code, k)
        elif cls == 0x01:  # LDX
            mode = code & 0xE0
            if mode == 0x00:
                asm.alu32(e.MOV, X, k)
            elif mode == 0x60:
                asm.ldx(e.W, X, e.FP, _mem(k))
            elif mode == 0x80:
                asm.ldx(e.W, X, e.R6, 0)
            elif mode == 0xA0:  # MSH: X = 4·(P[k] & 0xf), A kept
                asm.mov64r(TMP, A)
                asm.ld_abs(e.B, k)
                asm.alu32(e.AND, A, 0x0F)
                asm.alu32(e.LSH, A, 2)
                asm.mov64r(X, A)
                asm.mov64r(A, TMP)
            else:
                raise Untranslatable(f"ldx mode {mode:#x}")
        elif cls == 0x02:
            asm.stx(e.W, e.FP, _mem(k), A)
        elif cls == 0x03:
            asm.stx(e.W, e.FP, _mem(k), X)
        elif cls == 0x04:  # ALU
            op, src = code & 0xF0, code & 0x08
            if op == e.NEG:
                asm.raw(e.ALU | e.NEG, A)
            elif op in (e.DIV, e.MOD) and src == 0 and k == 0:
                raise Untranslatable("division by the constant 0")
            elif src:
                asm.alu32r(op, A, X)
            else:
                asm.alu32(op, A, k)
        elif cls == 0x05:  # JMP
            op, src = code & 0xF0, code & 0x08
            if op == e.JA:
                asm.ja(f"{prefix}{pc + 1 + k}")
                continue
            t, f = pc + 1 + jt, pc + 1 + jf
            if max(t, f) >= n:
                raise Untranslatable(f"jump past the end at {pc}")
            if src:
                asm.raw(e.JMP32 | op | e.X, A, X, f"{prefix}{t}")
            else:
                asm.raw(e.JMP32 | op | e.K, A, 0, f"{prefix}{t}", e._s32(k))
            if f != pc + 1:
                asm.ja(f"{prefix}{f}")
        elif cls == 0x06:  # RET
            rval = code & 0x18
            if rval == 0x00:  # K
                if k:
                    asm.ja(accept)
                else:
                    asm.ret(0)
            elif rval == 0x10:  # A
                asm.jmp(e.JNE, A, 0, accept)
                asm.ret(0)
            else:
                raise Untranslatable("ret X")
        elif cls == 0x07:  # MISC
            if code == 0x07:  # TAX
                asm.alu32r(e.MOV, X, A)
            elif code == 0x87:  # TXA
                asm.alu32r(e.MOV, A, X)
            else:
                raise Untranslatable(f"misc opcode {code:#x}")
    asm.label(f"{prefix}{n}")
    asm.ret(0)  # falling off the end (libpcap never does) rejects


def _ld(asm: e.Asm, code: int, k: int) -> None:
    mode, size = code & 0xE0, code & 0x18
    if mode == 0x00:
        asm.alu32(e.MOV, A, k)
    elif mode == 0x60:
        asm.ldx(e.W, A, e.FP, _mem(k))
    elif mode == 0x80:
        asm.ldx(e.W, A, e.R6, 0)  # skb->len
    elif mode == 0x20 and k >= SKF_AD_OFF:
        ad = k - SKF_AD_OFF
        if ad == _AD_PROTOCOL:
            asm.ldx(e.W, A, e.R6, 16)
            asm.raw(e.ALU | 0xD0 | 0x08, A, 0, 0, 16)  # be16: skb->protocol is stored big-endian
        elif ad in _AD_FIELDS:
            asm.ldx(e.W, A, e.R6, _AD_FIELDS[ad])
        else:
            raise Untranslatable(f"ancillary load SKF_AD_OFF+{ad}")
    elif mode == 0x20:
        asm.ld_abs(size, k)
    elif mode == 0x40:
        asm.ld_ind(size, X, k)
    else:
        raise Untranslatable(f"ld mode {mode:#x}")
