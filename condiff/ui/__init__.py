"""condiff serve: a Gradio page and a JSON API over one generation service (thin: no diffusion logic here)."""
