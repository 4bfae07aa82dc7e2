# Sourced by gpu_run.sh and gpu_rerun.sh on a lent GPU machine, from the repository root there.
# The device copy's .git is the checkout the session started from, not the commit sent, so rows would record
# "<start>+dirty": it is moved aside and zoo.runtime.git_commit reads $DEINFOREG_COMMIT, as for any copy of a clean
# tree sent to another machine. Then the carried wheels (.whl/: SMP and timm; the image has no SMP) are installed.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT/cuda"
[ -n "${DEINFOREG_COMMIT:-}" ] || { echo "set DEINFOREG_COMMIT to the commit sent"; exit 2; }
echo "device copy's .git: $(git rev-parse --short=12 HEAD 2>/dev/null); sent: $DEINFOREG_COMMIT"
[ -d .git ] && mv .git /tmp/device-copy-git
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5
