# Hand over to the runtime; whatever escapes it ends in a reset.
try:
    from pb.boot import main

    main()
except KeyboardInterrupt:
    pass
except BaseException as exc:  # noqa: BLE001 - last line of defence on the board
    import sys

    if hasattr(sys, "print_exception"):
        sys.print_exception(exc)
    else:
        import traceback

        traceback.print_exc()
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        sys.exit(1)
