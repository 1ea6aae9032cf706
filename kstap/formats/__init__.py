"""File formats every stage shares: pcapng blocks (:mod:`.pcapng`) and reading capture files
(:mod:`.savefile`, pcap and pcapng). Plain codecs: they import no stage."""
