"""`python -m lightning_da <train | traces | evaluate | generate | report | plan | attack> [args]`: the commands without a
checkout."""

import sys

from lightning_da import cli


def main() -> None:
    commands = {"train": cli.train, "traces": cli.traces, "evaluate": cli.evaluate, "generate": cli.generate, "report": cli.report, "plan": cli.plan,
                "attack": cli.attack}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m lightning_da {{{' | '.join(commands)}}} [args]")
    command = sys.argv.pop(1)
    sys.argv[0] = f"lightning-da-{command}"
    commands[command]()


if __name__ == "__main__":
    main()
