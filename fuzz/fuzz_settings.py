"""atheris target: the config file, --set and KSTAP_* parser (kstap.settings_sources).

See fuzz/targets.py for the contract.
"""

from harness import main

if __name__ == "__main__":
    main("settings")
