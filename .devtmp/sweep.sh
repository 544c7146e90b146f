export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
for g in 1 2 3 4 5 7; do
  echo "== ddim 50 cfg $g"
  python3 -m condiff.cli eval bench --guidance-scale $g --batch-size 500 --out-dir /tmp/b$g 2>&1 | grep -v generating
done
echo "== ddpm 250 cfg 3"; python3 -m condiff.cli eval bench --sampler ddpm --steps 250 --guidance-scale 3 --batch-size 500 --out-dir /tmp/bp 2>&1 | grep -v generating
cp /tmp/b3/grid.png $OUT/grid3.png
