"""The eBPF assembler: encoding, labels, dead code left out, and the classic-BPF translation."""

from __future__ import annotations

import pytest

from kstap.filters import ebpf_asm as e
from kstap.filters.bpf import compile_filter
from kstap.filters.cbpf_to_ebpf import Untranslatable, translate


def test_encoding_matches_the_instruction_set() -> None:
    a = e.Asm()
    a.mov64(e.R0, 7)  # BPF_ALU64 | BPF_MOV | BPF_K = 0xb7
    a.ld_abs(e.H, 12)  # BPF_LD | BPF_ABS | BPF_H = 0x28
    a.alu32r(e.XOR, e.R8, e.R9)  # BPF_ALU | BPF_XOR | BPF_X = 0xac, dst 8, src 9
    a.exit()
    assert e.disassemble(a.build()) == [(0xB7, 0, 0, 0, 7), (0x28, 0, 0, 0, 12), (0xAC, 8, 9, 0, 0),
                                         (0x95, 0, 0, 0, 0)]


def test_a_32_bit_constant_is_stored_as_its_signed_twin() -> None:
    a = e.Asm()
    a.alu32(e.MUL, e.R8, 0xCC9E2D51)
    a.exit()
    assert e.disassemble(a.build())[0][4] == 0xCC9E2D51 - (1 << 32)


def test_labels_resolve_and_unreachable_code_is_left_out() -> None:
    a = e.Asm()
    a.jmp(e.JEQ, e.R0, 1, "yes")
    a.ret(0)
    a.ret(99)  # nothing jumps here: the verifier would refuse it
    a.label("yes")
    a.ret(1)
    code = e.disassemble(a.build())
    assert len(code) == 5
    assert code[0] == (0x15, 0, 0, 2, 1)  # over the two instructions of ret(0)


def test_a_64_bit_load_takes_two_slots_and_keeps_its_map_fd() -> None:
    a = e.Asm()
    a.ld_map_fd(e.R1, 5)
    a.ret(0)
    code = e.disassemble(a.build())
    assert code[0] == (0x18, 1, e.PSEUDO_MAP_FD, 0, 5) and code[1] == (0, 0, 0, 0, 0)


def test_an_undefined_label_is_an_error() -> None:
    a = e.Asm()
    a.ja("nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        a.build()


def test_translation_uses_32_bit_jumps_and_jumps_to_the_accept_label() -> None:
    prog = compile_filter("tcp port 80")
    a = e.Asm()
    translate(prog.insns, a, "accept")
    a.label("accept")
    a.ret(1)
    code = e.disassemble(a.build())
    conditional = [op for op, *_ in code if op & 0x07 in (e.JMP, e.JMP32) and op & 0xF0 not in (e.JA, e.EXIT)]
    assert conditional and all(op & 0x07 == e.JMP32 for op in conditional)


def test_an_ancillary_load_without_a_field_is_untranslatable() -> None:
    with pytest.raises(Untranslatable):
        translate([(0x20, 0, 0, 0xFFFFF000 + 56), (0x06, 0, 0, 1)], e.Asm(), "accept")  # SKF_AD_RANDOM
