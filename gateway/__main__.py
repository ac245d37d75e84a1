from gateway.cli import main

# guarded: the realtime filter worker is a spawned process (gateway/realtime/evaluation.py)
# and multiprocessing re-imports the parent's main module in it as ``__mp_main__``;
# unguarded, the worker would start a second gateway
if __name__ == "__main__":
    main()
