"""gguf_read_once: one parsed reader per file and one tensor-name table per architecture inside the block,
the gguf package exactly as it was outside it (also after an error). (That a conversion writes the same
files with it as without was checked byte for byte when it was introduced: the conversion takes ~12 s, too
long to repeat in every run.)"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from fusionrag_integrations.model.gguf_once import gguf_read_once


def tiny_gguf(path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_one_reader_per_file_and_one_name_table_inside_the_block(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    tiny_gguf(a)
    tiny_gguf(b)
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_read_once():
        first = gguf.GGUFReader(a)
        assert gguf.GGUFReader(str(a)) is first and gguf.GGUFReader(b) is not first
        assert isinstance(first, reader_class) and first.tensors[0].name == "token_embd.weight"
        table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is table
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not table
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(a) is not gguf.GGUFReader(a)  # outside: a new parse each call, as before


def test_the_package_is_restored_after_an_error(tmp_path):
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(ValueError, match="mid-conversion"), gguf_read_once():
        raise ValueError("mid-conversion")
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map
