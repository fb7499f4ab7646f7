#!/bin/bash
# DATA=utkface-64.zip OUT=out-folder bash experiments/recipe_race.sh   (run from the repository root, on one GPU)
# Three training recipes of the seed U-Net at once on one GPU; each then runs alone for 20 s (the others paused)
# to measure its own throughput; the best by held-out ε-MSE per GPU-minute keeps running, the others stop.
set -u
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
T0=$(date +%s)
DATA=${DATA:-utkface-64.zip} OUT=${OUT:-runs/race}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.used --format=csv
COMMON="--arch seed --data $DATA --compile-mode reduce-overhead --export-dtype fp16 --save-every 1000000 --steps 1000000 --max-minutes ${RACE_MIN:-7.6} --eval-images 1000"
python train.py $COMMON --out runs/tutorial --batch-size 128 --lr 2e-4 --warmup-steps 0 --grad-clip 0 --eval-every 500 --log-every 200 --sample-every 4000 > $OUT/tutorial.log 2>&1 & P_tutorial=$!
python train.py $COMMON --out runs/b256 --batch-size 256 --lr 4e-4 --warmup-steps 500 --grad-clip 1 --eval-every 250 --log-every 100 --sample-every 2000 > $OUT/b256.log 2>&1 & P_b256=$!
python train.py $COMMON --out runs/b1024 --batch-size 1024 --lr 3e-4 --warmup-steps 300 --grad-clip 1 --eval-every 64 --log-every 25 --sample-every 500 > $OUT/b1024.log 2>&1 & P_b1024=$!
NAMES="tutorial b256 b1024"
sleep ${CONC_S:-280}
echo "concurrent phase over at $(( $(date +%s) - T0 )) s"; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
lines() { [ -f runs/$1/metrics.jsonl ] && wc -l < runs/$1/metrics.jsonl || echo 0; }
echo "{" > /tmp/solo.json
for n in $NAMES; do
  for m in $NAMES; do pid=P_$m; [ $m != $n ] && kill -STOP ${!pid} 2>/dev/null; done
  pid=P_$n; kill -CONT ${!pid} 2>/dev/null
  sleep 2; a=$(lines $n); sleep 18; b=$(lines $n)
  echo "\"$n\": [$a, $b]," >> /tmp/solo.json
done
echo '"_": 0}' >> /tmp/solo.json
for n in $NAMES; do pid=P_$n; kill -CONT ${!pid} 2>/dev/null; done
echo "solo windows over at $(( $(date +%s) - T0 )) s"
WIN=$(python experiments/recipe_pick.py $NAMES | tee $OUT/race.txt | tail -1)
echo "winner: $WIN"
for n in $NAMES; do pid=P_$n; [ $n != $WIN ] && kill -TERM ${!pid} 2>/dev/null; done
wait
echo "runs over at $(( $(date +%s) - T0 )) s"
echo $WIN > runs/winner
python train.py export --ckpt runs/$WIN/checkpoint.pt --out runs/$WIN/export16 --export-dtype fp16 --name "seed U-Net ($WIN)"
tar czf $OUT/runs.tgz runs/*/metrics.jsonl runs/*/samples runs/winner
(cd runs/$WIN && tar cf - export16 | split -b 15M - $OUT/export16.tar.part-)
ls -la $OUT; echo "all done at $(( $(date +%s) - T0 )) s"
