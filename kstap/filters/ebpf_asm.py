"""A small eBPF assembler: the instructions kstap's socket filter needs, with labels.

Encoding (Documentation/bpf/standardization/instruction-set.rst): each instruction is 8 bytes,
``u8 opcode; u8 dst:4, src:4; s16 off; s32 imm``; the 64-bit immediate load takes two slots.
Socket filters (BPF_PROG_TYPE_SOCKET_FILTER) may also use the legacy packet loads
``BPF_LD | BPF_ABS|BPF_IND | size``: R6 must hold the context (the sk_buff), R0 gets the value in
host order (already ``ntohl``-ed, as in classic BPF), R1-R5 are clobbered, and a load past the end
of the packet ends the program with return value 0 (the packet is dropped).

Registers: R0 return value / helper result, R1-R5 helper arguments (clobbered by calls), R6-R9
callee-saved, R10 the read-only frame pointer (stack grows down, 512 bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# instruction classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# sizes
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
# modes
IMM, ABS, IND, MEM = 0x00, 0x20, 0x40, 0x60
# sources
K, X = 0x00, 0x08
# ALU ops
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0, 0xC0)
# jump ops
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, CALL, EXIT, JLT, JLE = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0, 0xB0)

PSEUDO_MAP_FD = 1

# helper function ids (include/uapi/linux/bpf.h, enum bpf_func_id)
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, KTIME_GET_NS = 1, 2, 3, 5
GET_SMP_PROCESSOR_ID = 8

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
FP = R10

_INSN = struct.Struct("<BBhi")

Target = int | str
"""A jump target: a label, or a relative offset."""


@dataclass
class Asm:
    """Collects instructions; :meth:`build` resolves labels into 16-bit relative offsets."""

    code: list[tuple[int, int, int, Target, int]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.code)

    def raw(self, opcode: int, dst: int = 0, src: int = 0, off: Target = 0, imm: int = 0) -> None:
        self.code.append((opcode, dst, src, off, imm))

    def label(self, name: str) -> None:
        if name in self.labels:
            raise ValueError(f"label {name!r} defined twice")
        self.labels[name] = len(self.code)

    # -- ALU (32-bit forms zero the upper half, as the flow hash wants) ------------------------------
    def alu32(self, op: int, dst: int, imm: int) -> None:
        self.raw(ALU | op | K, dst, 0, 0, _s32(imm))

    def alu32r(self, op: int, dst: int, src: int) -> None:
        self.raw(ALU | op | X, dst, src)

    def alu64(self, op: int, dst: int, imm: int) -> None:
        self.raw(ALU64 | op | K, dst, 0, 0, _s32(imm))

    def alu64r(self, op: int, dst: int, src: int) -> None:
        self.raw(ALU64 | op | X, dst, src)

    def mov64(self, dst: int, imm: int) -> None:
        self.alu64(MOV, dst, imm)

    def mov64r(self, dst: int, src: int) -> None:
        self.alu64r(MOV, dst, src)

    def ld_imm64(self, dst: int, value: int) -> None:
        self.raw(LD | DW | IMM, dst, 0, 0, _s32(value & 0xFFFFFFFF))
        self.raw(0, 0, 0, 0, _s32((value >> 32) & 0xFFFFFFFF))

    def ld_map_fd(self, dst: int, fd: int) -> None:
        self.raw(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, fd)
        self.raw(0, 0, 0, 0, 0)

    # -- memory ----------------------------------------------------------------------------------------
    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        self.raw(LDX | MEM | size, dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        self.raw(STX | MEM | size, dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        self.raw(ST | MEM | size, dst, 0, off, _s32(imm))

    def ld_abs(self, size: int, offset: int) -> None:
        """R0 = packet[offset] (network order read, host value)."""
        self.raw(LD | ABS | size, 0, 0, 0, _s32(offset))

    def ld_ind(self, size: int, src: int, offset: int) -> None:
        """R0 = packet[src + offset]."""
        self.raw(LD | IND | size, 0, src, 0, _s32(offset))

    # -- control ---------------------------------------------------------------------------------------
    def jmp(self, op: int, dst: int, imm: int, target: Target) -> None:
        self.raw(JMP | op | K, dst, 0, target, _s32(imm))

    def jmpr(self, op: int, dst: int, src: int, target: Target) -> None:
        self.raw(JMP | op | X, dst, src, target)

    def ja(self, target: Target) -> None:
        self.raw(JMP | JA, 0, 0, target)

    def call(self, helper: int) -> None:
        self.raw(JMP | CALL, 0, 0, 0, helper)

    def exit(self) -> None:
        self.raw(JMP | EXIT)

    def ret(self, value: int) -> None:
        self.mov64(R0, value)
        self.exit()

    def build(self) -> bytes:
        """The program's bytes, without the instructions no path reaches (the verifier rejects
        unreachable code, and translated classic filters and shared tails leave some)."""
        n = len(self.code)
        targets: list[int | None] = []
        for pc, (_, _, _, off, _) in enumerate(self.code):
            if isinstance(off, str):
                if off not in self.labels:
                    raise ValueError(f"undefined label {off!r}")
                targets.append(self.labels[off])
            else:
                targets.append(pc + 1 + off if self._is_jump(pc) else None)
        reach = [False] * n
        work = [0]
        while work:
            pc = work.pop()
            if pc >= n or reach[pc]:
                continue
            reach[pc] = True
            opcode = self.code[pc][0]
            if opcode == LD | DW | IMM:
                reach[pc + 1] = True
                work.append(pc + 2)
                continue
            if self._is_jump(pc):
                tgt = targets[pc]
                assert tgt is not None
                work.append(tgt)
                if opcode & 0xF0 == JA and opcode & 0x07 == JMP:
                    continue
            if opcode == JMP | EXIT:
                continue
            work.append(pc + 1)
        index, new = [0] * (n + 1), 0
        for pc in range(n):
            index[pc] = new
            new += reach[pc]
        index[n] = new
        out = bytearray()
        for pc, (opcode, dst, src, off, imm) in enumerate(self.code):
            if not reach[pc]:
                continue
            tgt = targets[pc]
            if tgt is not None:
                off = index[tgt] - index[pc] - 1
                if not -0x8000 <= off <= 0x7FFF:
                    raise ValueError(f"jump at {pc} out of range")
            assert isinstance(off, int)
            out += _INSN.pack(opcode, (src << 4) | dst, off, imm)
        return bytes(out)

    def _is_jump(self, pc: int) -> bool:
        opcode = self.code[pc][0]
        cls, op = opcode & 0x07, opcode & 0xF0
        return cls in (JMP, JMP32) and op not in (CALL, EXIT)


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def disassemble(code: bytes) -> list[tuple[int, int, int, int, int]]:
    """(opcode, dst, src, off, imm) per 8-byte slot, for tests and ``--debug`` dumps."""
    return [(op, regs & 0xF, regs >> 4, off, imm)
            for op, regs, off, imm in (_INSN.unpack_from(code, i) for i in range(0, len(code), 8))]
