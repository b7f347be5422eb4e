# Sourced by the GPU session scripts, with $out set: the versions used, and `timed`.
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee -a "$out/timings.txt"
timed() {  # timed NAME LIMIT COMMAND...: wall seconds of COMMAND into $out/timings.txt, its output into $out/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$out/timings.txt"
  tail -12 "$out/$name.log"
}
