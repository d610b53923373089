"""flaxlm: train and use language models with JAX and Flax, from a laptop CPU to a Cloud TPU pod slice."""

import setuptools

setuptools.setup(
    name='flaxlm',
    version='0.1.0',
    description='A JAX/Flax research codebase for training and using language models.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['model', 'data', 'train', 'configs']),
    python_requires='>=3.12',
    install_requires=[
        'jax>=0.11.2',
        'flax',
        'optax',
        'orbax-checkpoint',
        'tensorflow-datasets',
        'importlib_resources',  # TFDS needs it to prepare datasets, and does not declare it.
        'sentencepiece',
        'grain',
        'ml_collections',
        'absl-py',
        'numpy',
        'tensorboardX',
        'safetensors',  # Hugging Face checkpoints (flaxlm-convert), read and written as numpy arrays.
        'matplotlib',  # flaxlm-plot and the notebooks' figures.
    ],
    extras_require={
        'test': ['pytest', 'pytest-timeout', 'pytest-xdist', 'nbclient', 'nbformat', 'ipykernel'],
        'gpu': ['jax[cuda12]'],
        'tpu': ['jax[tpu]'],
    },
    entry_points={
        'console_scripts': [
            'flaxlm-train=train.main:main',
            'flaxlm-sample=train.sample_main:main',
            'flaxlm-export=train.export_main:main',
            'flaxlm-tokenizer=train.tokenizer_main:main',
            'flaxlm-info=train.info_main:main',
            'flaxlm-score=train.score_main:main',
            'flaxlm-convert=train.convert_main:main',
            'flaxlm-data=train.data_main:main',
            'flaxlm-estimate=train.estimate_main:main',
            'flaxlm-plot=train.plot_main:main',
        ],
    },
)
