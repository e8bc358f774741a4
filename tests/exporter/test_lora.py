"""--adapter: a merged PEFT LoRA adapter gives the PEFT model's logits."""

import numpy as np
import pytest
import torch

from planforge.errors import AdapterError
from planforge.exporter.api import ExportOptions, export
from planforge.runtime import open_backend


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merged_adapter_matches_peft_model(family, tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    source, _ = tiny_model(family)
    torch.manual_seed(3)
    targets = ["q_proj", "v_proj", "down_proj"] if family == "llama" else ["c_attn", "c_fc"]
    # init_lora_weights=False gives a non-zero B, so the adapter really changes the logits.
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)  # a fresh copy: peft edits it in place
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                             init_lora_weights=False)).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(1, 300, (1, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits.numpy()
        with peft_model.disable_adapter():
            unadapted = peft_model(input_ids=ids).logits.numpy()
    assert np.abs(expected - unadapted).max() > 1e-2  # the adapter matters

    export(str(source), tmp_path / "merged", ExportOptions(adapter=tmp_path / "adapter"))
    logits = open_backend(tmp_path / "merged").prefill_logits(ids.numpy())
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_adapter_directory_without_config(tiny_model, tmp_path):
    (tmp_path / "adapter").mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json"):
        export(str(tiny_model("llama")[0]), tmp_path / "out", ExportOptions(adapter=tmp_path / "adapter"))
    assert not (tmp_path / "out").exists()
