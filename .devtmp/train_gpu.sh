export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 - <<'PY' > /tmp/steps.txt
import time, sys, torch
from condiff.config import load_json
from condiff.train.config import TrainConfig
from condiff.train.trainer import setup, train_step, batches
cfg = load_json(TrainConfig, "configs/base32.json")
cfg.optim.steps = 120
run = setup(cfg, "/tmp/probe")
for i, b in enumerate(batches(run, 8)):
    if i == 30: torch.cuda.synchronize(); t = time.time()
    train_step(run, b)
torch.cuda.synchronize(); dt = (time.time() - t) / 90
print(f"step {dt*1000:.1f} ms", file=sys.stderr)
print(min(30000, int(400 / dt) // 1000 * 1000))
PY
STEPS=$(cat /tmp/steps.txt); echo "STEPS=$STEPS"
start=$(date +%s)
timeout 440 python3 -m condiff.cli train --config configs/base32.json --out /tmp/run --steps $STEPS --workers 8 2>&1 | tr '\r' '\n' | awk 'NR%40==1 || /samples|trained|rror/' > $OUT/train.log
echo "train wall $(( $(date +%s) - start )) s" >> $OUT/train.log
tail -4 $OUT/train.log; cat /tmp/run/checkpoints/latest
python3 -c "
import torch; from condiff.pipelines.text2image import Text2ImagePipeline
Text2ImagePipeline.from_pretrained('/tmp/run/model').save_pretrained('$OUT/base32', dtype=torch.float16)"
cp /tmp/run/config.json $OUT/train_config.json; cp $(ls /tmp/run/samples/*.png | tail -1) $OUT/samples.png
for g in 3 5; do python3 -m condiff.cli eval bench --guidance-scale $g --batch-size 500 --model $OUT/base32 --out-dir /tmp/b$g 2>&1 | grep -v generating; done
