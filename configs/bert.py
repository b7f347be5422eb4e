"""BERT-Base regression zoo (Tables 12-14), canonicalized with TransFusion, flow on dual-PCA coefficients.

Zoo: AdamW 1e-4, no weight decay, batch 32, 3 epochs, squared error on the
score; evaluation is Spearman's rank correlation. Flow: h=1024, batch 2,
lr 1e-4, Beta(2, 5) times, source N(0, 0.001^2), dual PCA with fp16 products.

Data: offline, the VADER human-rated sentences (text.py; `pip download
vaderSentiment==3.3.2 --no-deps --no-binary :all: -d DIR/vader_sentiment`)
with an 8192-token WordPiece vocabulary learned from their training split;
online, the paper's Yelp reviews: `--config.data.name=yelp
--config.model.vocab_size=30522`. Reduced runs from the command line, e.g.
`--config.model.hidden=64 --config.model.layers=2 --config.model.heads=2
--config.model.intermediate=128 --config.data.max_tokens=64`.
"""

from dwf_jax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.update(name="vader_sentiment", max_tokens=128, vocab_size=8192)
    config.model = model_config("bert", vocab_size=8192)
    config.zoo.update(
        epochs=3,
        batch_size=32,
        optimizer="adamw",
        learning_rate=1e-4,
        weight_decay=0.0,
        schedule="none",
        models_per_chunk=10,
    )
    config.canonical.update(method="transfusion", max_iter=10)
    config.pca.update(method="dual", components=-1, fp16=True)
    config.flow.update(
        hidden=1024,
        time_embed_dim=64,
        learning_rate=1e-4,
        batch_size=2,
        source_std=0.001,
        time_distribution="beta",
        beta=(2.0, 5.0),
    )
    config.eval.batch_size = 500
    # The default baselines are 400 more models: 175 GB of BERT-Base weights. Ask for them on smaller encoders.
    config.baselines.update(noise_stds=(), mixtures=0, average_of=0, gaussian=0)
    return config
