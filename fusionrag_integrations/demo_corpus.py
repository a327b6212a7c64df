"""The demo's small corpus: factual passages about spaceflight, written for this project (no external source)."""

PASSAGES = [
    "Voyager 1 was launched by NASA on 5 September 1977 from Cape Canaveral on a Titan IIIE rocket. It flew past "
    "Jupiter in March 1979 and Saturn in November 1980, where it made a close pass of the moon Titan. That pass bent "
    "its path up and out of the plane of the planets, so it visited no other planet. In August 2012 Voyager 1 became "
    "the first human-made object to cross the heliopause into interstellar space, and it still sends data home "
    "through the Deep Space Network from more than 24 billion kilometres away.",
    "Voyager 2 was launched on 20 August 1977, sixteen days before Voyager 1, on a slower trajectory that allowed a "
    "grand tour of the outer planets. It passed Jupiter in 1979 and Saturn in 1981, then became the only spacecraft "
    "ever to visit Uranus, in January 1986, and Neptune, in August 1989. At Neptune it discovered the Great Dark "
    "Spot and geysers on the moon Triton. It crossed the heliopause in November 2018.",
    "The Hubble Space Telescope was carried into low Earth orbit by the Space Shuttle Discovery in April 1990. Its "
    "first images were blurred because the main mirror had been ground to a slightly wrong shape, an error of about "
    "two micrometres at the edge. In December 1993 astronauts on the first servicing mission installed corrective "
    "optics called COSTAR and a new camera with built-in correction, and Hubble's vision became sharp.",
    "The James Webb Space Telescope launched on 25 December 2021 on an Ariane 5 rocket from Kourou in French Guiana. "
    "Its 6.5 metre mirror is made of 18 gold-coated beryllium segments, and a five-layer sunshield the size of a "
    "tennis court keeps its instruments cold. Webb observes mainly in the infrared and orbits the Sun near the "
    "second Lagrange point, about 1.5 million kilometres from Earth, on the side away from the Sun.",
    "Apollo 11 launched on 16 July 1969 and landed on the Moon on 20 July in the Sea of Tranquility. Neil Armstrong "
    "and Buzz Aldrin spent about two and a half hours walking on the surface, collecting 21.5 kilograms of rock and "
    "soil, while Michael Collins stayed in lunar orbit aboard the command module Columbia. The crew splashed down "
    "in the Pacific Ocean on 24 July.",
    "The International Space Station has been continuously occupied since November 2000. It is a joint project of "
    "the space agencies of the United States, Russia, Europe, Japan and Canada. The station orbits Earth about every "
    "90 minutes at an altitude of roughly 400 kilometres, so its crew sees about sixteen sunrises a day, and it is "
    "large enough to be seen from the ground with the naked eye.",
    "The Mars rover Curiosity landed in Gale Crater on 6 August 2012, lowered to the surface on cables by a "
    "rocket-powered sky crane. The car-sized rover carries a laser that vaporises rock to read its chemistry. Its "
    "mission is to find out whether Mars once had environments able to support microbial life, and it found "
    "evidence of an ancient lake bed in the crater.",
    "The Rosetta spacecraft of the European Space Agency was launched in 2004 and reached comet "
    "67P/Churyumov-Gerasimenko in August 2014 after a ten-year journey that included three flybys of Earth. Its "
    "lander, Philae, touched down on the comet's surface on 12 November 2014, the first landing on a comet, but it "
    "bounced and came to rest in a shadow where its solar panels could not charge its batteries.",
    "Sputnik 1, launched by the Soviet Union on 4 October 1957, was the first artificial satellite. It was a "
    "polished metal sphere 58 centimetres across with four long radio antennas, and it transmitted radio pulses "
    "that amateurs around the world could hear. Its batteries ran out after three weeks, and it burned up in the "
    "atmosphere in January 1958.",
    "New Horizons was launched in January 2006 and flew past Pluto on 14 July 2015 at about 14 kilometres per "
    "second. It returned the first close-up images of Pluto, showing mountains of water ice and a large "
    "heart-shaped plain of nitrogen ice later named Tombaugh Regio. On 1 January 2019 it flew past Arrokoth, the "
    "most distant object ever visited by a spacecraft.",
    "The Cassini spacecraft orbited Saturn from 2004 to 2017. Its Huygens probe, built by the European Space "
    "Agency, landed on the moon Titan in January 2005 and found rivers and lakes of liquid methane. Cassini also "
    "discovered plumes of water ice erupting from the south pole of Enceladus. The mission ended in September 2017 "
    "with a deliberate plunge into Saturn's atmosphere to avoid contaminating the moons.",
    "Yuri Gagarin became the first human in space on 12 April 1961, completing one orbit of Earth aboard Vostok 1 "
    "in 108 minutes. He ejected from the capsule during its descent and landed by parachute near the Volga river. "
    "Two years later, in June 1963, Valentina Tereshkova became the first woman in space, orbiting Earth 48 times "
    "aboard Vostok 6.",
]

QUESTIONS = [
    "Which planets did Voyager 2 visit that no other spacecraft has visited?",
    "How was the blurry vision of the Hubble Space Telescope fixed?",
    "Where does the James Webb Space Telescope orbit?",
]
