"""Peak dense bfloat16 FLOP/s of the accelerators flaxlm runs on, and model FLOPs utilization (MFU) from them.

A device is looked up by its `jax.Device.device_kind` ('TPU v5 lite', 'NVIDIA H100 80GB HBM3'), with the words
that vary within one chip (memory size, HBM generation, SXM package) dropped. A kind not in the table has no
peak: MFU is then unknown rather than guessed.
"""

import re

# Per device (one JAX device: a TPU chip from v4 on, one GPU), dense (no sparsity) bfloat16 matmul FLOP/s.
# TPUs: Google Cloud's system architecture pages, cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}.
# NVIDIA: the datasheets give bfloat16 Tensor Core FLOP/s "with sparsity"; dense is half (rounded down, as
# MaxText's table has it). A100 datasheet (SXM and PCIe): 312 TFLOPS dense. H100 datasheet: SXM 1,979, PCIe 1,513
# TFLOPS with sparsity. H200 datasheet (SXM): 1,979 TFLOPS with sparsity. Other variants (NVL, GH200) are left out
# until checked against their datasheets.
PEAK_BF16_FLOPS = {
    'tpu v4': 275e12,
    'tpu v5 lite': 197e12,  # v5e reports itself as 'TPU v5 lite'.
    'tpu v5e': 197e12,
    'tpu v5': 459e12,  # v5p reports itself as 'TPU v5'.
    'tpu v5p': 459e12,
    'tpu v6 lite': 918e12,  # v6e (Trillium) reports itself as 'TPU v6 lite'.
    'tpu v6e': 918e12,
    'nvidia a100': 312e12,
    'nvidia a100 pcie': 312e12,
    'nvidia h100': 989e12,  # SXM: 'NVIDIA H100 80GB HBM3'.
    'nvidia h100 pcie': 756e12,
    'nvidia h200': 989e12,
}
VARIANT_WORDS = re.compile(r'\d+gb|hbm\d*e?|sxm\d*')  # '80GB', 'HBM3', 'SXM4': same chip, same peak.


def chip_name(device_kind: str) -> str:
  """Returns the table's key for a device kind: lower case, words split at spaces and hyphens, variants dropped."""
  words = re.split(r'[\s-]+', device_kind.strip().lower())
  return ' '.join(w for w in words if not VARIANT_WORDS.fullmatch(w))


def peak_flops_per_second(device_kind: str) -> float | None:
  """Returns the device's peak dense bfloat16 FLOP/s, or None for a kind the table does not know (e.g. 'cpu')."""
  return PEAK_BF16_FLOPS.get(chip_name(device_kind))


def mfu(flops_per_token: float, tokens_per_second_per_device: float, device_kind: str) -> float | None:
  """Returns the fraction of the device's peak FLOP/s that training does usefully, or None if the peak is unknown."""
  peak = peak_flops_per_second(device_kind)
  if peak is None:
    return None
  return flops_per_token * tokens_per_second_per_device / peak


# Per device, HBM bandwidth in bytes/s, from the same spec sheets: what bounds decoding one token at a time.
HBM_BYTES_PER_SECOND = {
    'tpu v4': 1.2e12,
    'tpu v5 lite': 8.19e11,
    'tpu v5e': 8.19e11,
    'tpu v5': 2.765e12,
    'tpu v5p': 2.765e12,
    'tpu v6 lite': 1.64e12,
    'tpu v6e': 1.64e12,
    'nvidia a100': 2.039e12,  # 80GB SXM; the 40GB part has 1.555e12.
    'nvidia h100': 3.35e12,  # SXM.
    'nvidia h100 pcie': 2.0e12,
    'nvidia h200': 4.8e12,
}


def hbm_bytes_per_second(device_kind: str) -> float | None:
  """Returns the device's memory bandwidth in bytes/s, or None for a kind the table does not know."""
  return HBM_BYTES_PER_SECOND.get(chip_name(device_kind))
