"""Stage 4: the filtered SFT dataset of each language (see kakugo.dataset.stage)."""
