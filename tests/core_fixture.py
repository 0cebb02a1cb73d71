"""A small CORE eval bundle for tests, in the layout of the real eval_bundle.zip: all 22 tasks with their real
labels, types, shots, delimiters and random baselines, and a dozen or so hand-written rows each.

    bundle = write_bundle(tmp)      # tmp/eval_bundle/{core.yaml, eval_meta_data.csv, eval_data/<category>/<task>.jsonl}
    zip_path = make_zip(tmp)        # tmp/eval_bundle.zip, top folder eval_bundle/ (as the real one)

Rows are chosen to exercise the evaluator: prompts far longer than 64 tokens (agi_eval_lsat_ar, squad, coqa),
multiple-choice answers that share their first words ("New York" / "New Jersey"), schema options that share
their last words ("... John's sister" / "... Mary's sister"), multi-token continuations. Deterministic: the
same bytes every time.
"""

import json
import os
import zipfile

# label: (type, shots, delimiter, random baseline %, dataset_uri), in the order of the real core.yaml
TASKS = {
    "hellaswag_zeroshot": ("multiple_choice", 0, " ", 25, "language_understanding/hellaswag.jsonl"),
    "jeopardy": ("language_modeling", 10, "\nAnswer: ", 0, "world_knowledge/jeopardy_all.jsonl"),
    "bigbench_qa_wikidata": ("language_modeling", 10, " ", 0, "world_knowledge/bigbench_qa_wikidata.jsonl"),
    "arc_easy": ("multiple_choice", 10, "\nAnswer: ", 25, "world_knowledge/arc_easy.jsonl"),
    "arc_challenge": ("multiple_choice", 10, "\nAnswer: ", 25, "world_knowledge/arc_challenge.jsonl"),
    "copa": ("multiple_choice", 0, " ", 50, "commonsense_reasoning/copa.jsonl"),
    "commonsense_qa": ("multiple_choice", 10, " ", 20, "commonsense_reasoning/commonsense_qa.jsonl"),
    "piqa": ("multiple_choice", 10, "\nAnswer: ", 50, "commonsense_reasoning/piqa.jsonl"),
    "openbook_qa": ("multiple_choice", 0, " ", 25, "commonsense_reasoning/openbook_qa.jsonl"),
    "lambada_openai": ("language_modeling", 0, " ", 0, "language_understanding/lambada_openai.jsonl"),
    "hellaswag": ("multiple_choice", 10, " ", 25, "language_understanding/hellaswag.jsonl"),
    "winograd": ("schema", 0, " ", 50, "language_understanding/winograd_wsc.jsonl"),
    "winogrande": ("schema", 0, " ", 50, "language_understanding/winogrande.jsonl"),
    "bigbench_dyck_languages": ("language_modeling", 10, " ", 0,
                                "symbolic_problem_solving/bigbench_dyck_languages.jsonl"),
    "agi_eval_lsat_ar": ("multiple_choice", 3, " ", 20, "symbolic_problem_solving/agi_eval_lsat_ar.jsonl"),
    "bigbench_cs_algorithms": ("language_modeling", 10, " ", 0,
                               "symbolic_problem_solving/bigbench_cs_algorithms.jsonl"),
    "bigbench_operators": ("language_modeling", 10, " ", 0, "symbolic_problem_solving/bigbench_operators.jsonl"),
    "bigbench_repeat_copy_logic": ("language_modeling", 10, " ", 0,
                                   "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl"),
    "squad": ("language_modeling", 10, " ", 0, "reading_comprehension/squad.jsonl"),
    "coqa": ("language_modeling", 0, " ", 0, "reading_comprehension/coqa.jsonl"),
    "boolq": ("multiple_choice", 10, "\nAnswer: ", 62, "reading_comprehension/boolq.jsonl"),
    "bigbench_language_identification": ("multiple_choice", 10, " ", 9.1,
                                         "language_understanding/bigbench_language_identification.jsonl"),
}


def mc(query, choices, gold):
    return {"query": query, "choices": choices, "gold": gold}


def schema(options, continuation, gold):
    return {"context_options": options, "continuation": continuation, "gold": gold}


def lm(context, continuation):
    return {"context": context, "continuation": continuation}


HELLASWAG = [
    mc("A woman kneads dough on a floured counter. She", ["shapes it into a loaf and puts it in the oven.",
       "throws the dough out of the window.", "paints the counter a bright blue.", "reads the dough a story."], 0),
    mc("A man is standing on a ladder next to a house. He", ["eats the ladder for lunch.",
       "cleans the leaves out of the gutter.", "swims across the roof.", "folds the house in half."], 1),
    mc("Two children are building a sandcastle on the beach. They", ["fly the sandcastle like a kite.",
       "put the sandcastle in the fridge.", "dig a moat around it with a small shovel.", "mail it to their aunt."], 2),
    mc("A cyclist stops at a red light. When the light turns green, she", ["falls asleep on the bike.",
       "orders a pizza from the light.", "paints the bicycle yellow.", "pedals across the intersection."], 3),
    mc("A chef chops onions on a wooden board. His eyes", ["turn into small onions.", "start to water from the fumes.",
       "leave the kitchen on their own.", "sing a quiet song."], 1),
    mc("A dog sees a ball rolling across the yard. The dog", ["chases the ball and brings it back.",
       "writes a letter about the ball.", "ignores the yard for a year.", "turns into a cat."], 0),
    mc("A student opens a textbook at the library. She", ["builds a boat out of the pages.",
       "sells the library to a stranger.", "takes notes on the chapter in a notebook.",
       "throws the book at a bird."], 2),
    mc("A man pours coffee into a mug. He", ["pours the mug into the coffee.", "plants the mug in the garden.",
       "sends the coffee to the moon.", "adds a splash of milk and stirs it."], 3),
    mc("A gardener kneels beside a flower bed. She", ["pulls out the weeds by hand.", "teaches the flowers to read.",
       "drives the flower bed to town.", "freezes the garden solid."], 0),
    mc("A boy kicks a soccer ball toward the goal. The goalkeeper", ["eats the soccer ball.",
       "dives to the left and blocks the shot.", "goes home to sleep.", "paints the goal purple."], 1),
    mc("A woman ties her running shoes at the door. She", ["bakes the shoes into a pie.",
       "gives the door a pair of shoes.", "jogs down the street toward the park.", "hides the shoes in the sea."], 2),
    mc("An old man feeds bread crumbs to the pigeons. The birds", ["read the newspaper aloud.",
       "build a tall tower of bread.", "fly to the moon and back.", "gather around his feet to eat."], 3),
    mc("A painter dips a brush into a can of white paint. He", ["drinks the paint from the can.",
       "spreads the paint evenly across the wall.", "buries the brush in the yard.", "mails the wall to a friend."], 1),
    mc("A girl holds an umbrella as the rain starts to fall. She", ["stays dry while she walks home.",
       "throws the umbrella into the rain.", "turns the rain into snow.", "sells the rain at a market."], 0),
]

JEOPARDY = [
    lm("SCIENCE: This planet is known as the Red Planet", "Mars"),
    lm("U.S. CITIES: This city is called the Big Apple", "New York City"),
    lm("LITERATURE: He wrote the play Romeo and Juliet", "William Shakespeare"),
    lm("ANIMALS: This large animal has a trunk and tusks", "the elephant"),
    lm("GEOGRAPHY: This is the longest river in Africa", "the Nile"),
    lm("MUSIC: This instrument has 88 keys", "the piano"),
    lm("HISTORY: He was the first President of the United States", "George Washington"),
    lm("FOOD: Guacamole is made mostly from this green fruit", "the avocado"),
    lm("SPORTS: This sport is played at Wimbledon", "tennis"),
    lm("ART: She painted many pictures of flowers in New Mexico", "Georgia O'Keeffe"),
    lm("SPACE: This was the first man to walk on the moon", "Neil Armstrong"),
    lm("BODY: This organ pumps blood through the body", "the heart"),
    lm("LANGUAGES: This is the official language of Brazil", "Portuguese"),
]

QA_WIKIDATA = [
    lm("The capital of France is", "Paris"),
    lm("The capital of Japan is", "Tokyo"),
    lm("The author of Pride and Prejudice is", "Jane Austen"),
    lm("The chemical symbol of gold is", "Au"),
    lm("The largest ocean on Earth is the", "Pacific Ocean"),
    lm("The currency of the United Kingdom is the", "pound sterling"),
    lm("The composer of the Fifth Symphony is", "Ludwig van Beethoven"),
    lm("The tallest mountain in the world is", "Mount Everest"),
    lm("The inventor of the telephone is", "Alexander Graham Bell"),
    lm("The country where the Eiffel Tower stands is", "France"),
    lm("The language spoken in Mexico is", "Spanish"),
    lm("The planet closest to the sun is", "Mercury"),
    lm("The city of the Statue of Liberty is", "New York"),
]

ARC_EASY = [
    mc("Question: Which state of matter has a fixed shape?", ["solid", "liquid", "gas", "plasma"], 0),
    mc("Question: What do plants need from the air to make food?", ["oxygen", "carbon dioxide", "nitrogen",
       "helium"], 1),
    mc("Question: Which tool is used to measure temperature?", ["a ruler", "a scale", "a thermometer", "a compass"], 2),
    mc("Question: What causes day and night on Earth?", ["the moon's orbit", "the sun's orbit", "clouds",
       "the Earth's rotation"], 3),
    mc("Question: Which animal is a mammal?", ["a shark", "a whale", "a frog", "a snake"], 1),
    mc("Question: What is the main source of energy for Earth?", ["the sun", "the moon", "wind", "oil"], 0),
    mc("Question: Which of these is a renewable resource?", ["coal", "natural gas", "sunlight", "oil"], 2),
    mc("Question: What part of a plant takes in water from the soil?", ["the flower", "the leaf", "the stem",
       "the roots"], 3),
    mc("Question: Which object is attracted to a magnet?", ["an iron nail", "a wooden spoon", "a rubber ball",
       "a glass cup"], 0),
    mc("Question: What happens to water when it freezes?", ["it boils", "it becomes ice", "it turns to gas",
       "it disappears"], 1),
    mc("Question: Which sense do we use to hear?", ["sight", "smell", "hearing", "taste"], 2),
    mc("Question: Which layer of Earth do we live on?", ["the inner core", "the outer core", "the mantle",
       "the crust"], 3),
]

ARC_CHALLENGE = [
    mc("Question: A student heats ice in a pan. Which property stays the same as it melts?", ["the mass",
       "the shape", "the state", "the volume"], 0),
    mc("Question: Which change is a chemical change?", ["ice melting", "wood burning", "glass breaking",
       "salt dissolving"], 1),
    mc("Question: Why does the moon appear to change shape during a month?", ["clouds cover it",
       "it spins quickly", "we see different parts of its lit side", "the Earth blocks it"], 2),
    mc("Question: Which is the best way to test whether a fertilizer helps plants grow?", ["use one plant",
       "water only some plants", "grow plants in the dark", "compare plants with and without it"], 3),
    mc("Question: What mostly determines the climate of a region?", ["its latitude", "its population",
       "its roads", "its language"], 0),
    mc("Question: Which energy change happens in a flashlight?", ["light to chemical",
       "chemical to light", "sound to heat", "heat to motion"], 1),
    mc("Question: Fossils of sea shells are found on a mountain. What does this suggest?", [
       "birds carried them", "people lost them", "the area was once under water", "the shells grew there"], 2),
    mc("Question: Which gas makes up most of the Earth's atmosphere?", ["oxygen", "carbon dioxide", "argon",
       "nitrogen"], 3),
    mc("Question: What is the function of red blood cells?", ["to carry oxygen", "to fight germs",
       "to clot blood", "to digest food"], 0),
    mc("Question: Which simple machine is a ramp?", ["a lever", "an inclined plane", "a pulley", "a wheel"], 1),
    mc("Question: Which process forms sedimentary rock?", ["melting", "cooling lava",
       "pressing layers of sediment", "heat and pressure"], 2),
    mc("Question: A ball rolls slower and slower on grass. What force slows it?", ["gravity", "magnetism",
       "electricity", "friction"], 3),
]

COPA = [
    mc("The man turned on the faucet, therefore", ["water flowed from the spout.", "the toilet filled with water."], 0),
    mc("The girl found a bug in her cereal, therefore", ["she poured milk in the bowl.", "she lost her appetite."], 1),
    mc("The woman was hungry, so", ["she ate a sandwich.", "she went to sleep."], 0),
    mc("The window broke because", ["the sun was shining.", "a ball hit it."], 1),
    mc("The ice melted because", ["the room was warm.", "the room was dark."], 0),
    mc("The boy was tired, so", ["he ran a mile.", "he went to bed early."], 1),
    mc("The car ran out of gas, so", ["the driver walked to a gas station.", "the driver washed the car."], 0),
    mc("The baby cried because", ["she was smiling.", "she was hungry."], 1),
    mc("The road was icy, so", ["the driver slowed down.", "the driver sped up."], 0),
    mc("The plant died because", ["it got sunlight.", "nobody watered it."], 1),
    mc("The crowd cheered because", ["the team scored a goal.", "the team went home."], 0),
    mc("The lamp went dark because", ["the room was clean.", "the bulb burned out."], 1),
]

COMMONSENSE_QA = [
    mc("Question: Where would you put a dirty plate after dinner?", ["the sink", "the bed", "the car",
       "the garden", "the roof"], 0),
    mc("Question: What do people use to cut paper?", ["a spoon", "scissors", "a pillow", "a cup", "a sock"], 1),
    mc("Question: Where do you keep milk cold?", ["the oven", "the closet", "the fridge", "the mailbox",
       "the shelf"], 2),
    mc("Question: What would you wear on your feet in the snow?", ["a hat", "gloves", "a scarf", "sunglasses",
       "boots"], 4),
    mc("Question: Where would you go to borrow a book?", ["a bakery", "a bank", "a gym", "a library",
       "a farm"], 3),
    mc("Question: What do you need to start a campfire?", ["wood", "ice", "sand", "water", "snow"], 0),
    mc("Question: Where would you find many trees?", ["a desert", "a forest", "an ocean", "a kitchen",
       "a garage"], 1),
    mc("Question: What does a person do when they are tired?", ["run", "shout", "sleep", "cook", "dance"], 2),
    mc("Question: Where do people usually watch a movie?", ["a church", "a zoo", "a pool", "a theater",
       "a barn"], 3),
    mc("Question: What keeps you dry in the rain?", ["a fan", "a towel", "a lamp", "a book", "an umbrella"], 4),
    mc("Question: Where would you see a lot of cars parked?", ["a parking lot", "a bedroom", "a lake",
       "a tree", "a nest"], 0),
    mc("Question: What do you use to write on a blackboard?", ["a brush", "chalk", "a fork", "a key",
       "a coin"], 1),
]

PIQA = [
    mc("Goal: To keep bread fresh for longer,", ["store it in a sealed bag.", "leave it open on the table."], 0),
    mc("Goal: To cool a hot drink quickly,", ["put it in the oven.", "add a few ice cubes."], 1),
    mc("Goal: To open a stuck jar lid,", ["run the lid under hot water.", "put the jar in the freezer."], 0),
    mc("Goal: To clean a dusty shelf,", ["blow on it from far away.", "wipe it with a damp cloth."], 1),
    mc("Goal: To dry wet shoes,", ["stuff them with newspaper.", "fill them with water."], 0),
    mc("Goal: To see in a dark room,", ["close your eyes.", "turn on the light."], 1),
    mc("Goal: To hang a picture on a wall,", ["use a nail and a hammer.", "use a spoon and glue."], 0),
    mc("Goal: To keep a cut clean,", ["cover it with dirt.", "cover it with a bandage."], 1),
    mc("Goal: To make tea,", ["steep a tea bag in hot water.", "steep a tea bag in cold sand."], 0),
    mc("Goal: To find your way in a new city,", ["throw away the map.", "use a map on your phone."], 1),
    mc("Goal: To remove a splinter,", ["use clean tweezers.", "use a hammer."], 0),
    mc("Goal: To save water while brushing teeth,", ["leave the tap running.", "turn off the tap."], 1),
]

OPENBOOK_QA = [
    mc("The sun is responsible for", ["puppies learning new tricks", "plants sprouting, blooming and wilting",
       "children growing up", "flowers wilting in a vase"], 1),
    mc("A magnet will stick to", ["a steel door", "a wooden table", "a plastic cup", "a paper bag"], 0),
    mc("An example of a conductor is", ["rubber", "wood", "copper wire", "glass"], 2),
    mc("When water evaporates it becomes", ["ice", "salt", "sand", "vapor"], 3),
    mc("Animals that eat only plants are called", ["herbivores", "carnivores", "predators", "scavengers"], 0),
    mc("The moon shines because it", ["makes its own light", "reflects light from the sun", "is on fire",
       "is made of glass"], 1),
    mc("A seed needs water to", ["melt", "freeze", "germinate", "explode"], 2),
    mc("Sound travels fastest through", ["air", "a vacuum", "smoke", "solid steel"], 3),
    mc("The largest city in the United States is", ["New York", "New Jersey", "New Orleans", "New Delhi"], 0),
    mc("Which state borders New York City across the Hudson River?", ["New Hampshire", "New Jersey",
       "New Mexico", "New York"], 1),
    mc("A thermometer measures", ["weight", "length", "temperature", "speed"], 2),
    mc("Rain comes from", ["rocks", "trees", "the ground", "clouds"], 3),
]

LAMBADA = [
    lm("She opened the old wooden box and found a letter from her grandmother. She read the letter twice, then "
       "folded the", "letter"),
    lm("The dog barked all night at the cat on the fence. In the morning the neighbors complained about the", "dog"),
    lm("He practiced the piano every day for years. At the concert, everyone clapped when he finished playing "
       "the", "piano"),
    lm("They planted tomatoes in the spring and watered them every evening. By August they had more tomatoes than "
       "they could eat, so they gave the extra", "tomatoes"),
    lm("The train was late again. Maria looked at her watch, sighed, and kept waiting on the platform for the",
       "train"),
    lm("Tom lost his keys at the park. He searched under every bench and finally found his", "keys"),
    lm("The baker pulled the warm bread out of the oven. The whole shop smelled of fresh", "bread"),
    lm("After the storm, the river rose over its banks. The farmers watched the water cover the fields near the",
       "river"),
    lm("Anna wrote a long poem about the sea. Her teacher liked it so much that she read the", "poem"),
    lm("The kitten climbed the tall tree and could not get down. A firefighter used a ladder to rescue the",
       "kitten"),
    lm("Every winter the lake froze solid. The children skated on the", "lake"),
    lm("He bought a red bicycle with his savings. Every morning he rode the", "bicycle"),
]

WINOGRAD = [
    schema(["The trophy doesn't fit into the brown suitcase because the trophy",
            "The trophy doesn't fit into the brown suitcase because the suitcase"], "is too large.", 0),
    schema(["The trophy doesn't fit into the brown suitcase because the trophy",
            "The trophy doesn't fit into the brown suitcase because the suitcase"], "is too small.", 1),
    schema(["The city councilmen refused the demonstrators a permit because the city councilmen",
            "The city councilmen refused the demonstrators a permit because the demonstrators"], "feared violence.", 0),
    schema(["Joan made sure to thank Susan for all the help Joan",
            "Joan made sure to thank Susan for all the help Susan"], "had given.", 1),
    schema(["Paul tried to call George on the phone, but Paul",
            "Paul tried to call George on the phone, but George"], "wasn't successful.", 0),
    schema(["The man couldn't lift his son because the man",
            "The man couldn't lift his son because the son"], "was so heavy.", 1),
    schema(["The fish ate the worm. The fish", "The fish ate the worm. The worm"], "was hungry.", 0),
    schema(["The fish ate the worm. The fish", "The fish ate the worm. The worm"], "was tasty.", 1),
    schema(["He gave the book to John's sister", "He gave the book to Mary's sister"],
           "because John asked him to.", 0),
    schema(["I poured water from the bottle into the cup until the bottle",
            "I poured water from the bottle into the cup until the cup"], "was full.", 1),
    schema(["The sculpture rolled off the shelf because the sculpture",
            "The sculpture rolled off the shelf because the shelf"], "wasn't anchored.", 1),
    schema(["Sam's drawing was hung just above Tina's and Sam's drawing",
            "Sam's drawing was hung just above Tina's and Tina's drawing"], "did look much better with another "
           "one below it.", 0),
]

WINOGRANDE = [
    schema(["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so "
            "Maria"], "always got the harder cases.", 0),
    schema(["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so "
            "Maria"], "always got the easier cases.", 1),
    schema(["The cake was softer than the bread because the cake", "The cake was softer than the bread because "
            "the bread"], "had more butter in it.", 0),
    schema(["Kevin had to help Ryan move because Kevin", "Kevin had to help Ryan move because Ryan"],
           "had a lot of heavy boxes.", 1),
    schema(["The sweater fit Emily better than Beth since Emily", "The sweater fit Emily better than Beth since "
            "Beth"], "was the same size as the sweater.", 0),
    schema(["The lamp was brighter than the candle, so the lamp", "The lamp was brighter than the candle, so the "
            "candle"], "was not enough to read by.", 1),
    schema(["Ben liked the beach more than the mountains because the beach", "Ben liked the beach more than the "
            "mountains because the mountains"], "was warm and sunny.", 0),
    schema(["Lisa asked Amy for a ride because Lisa", "Lisa asked Amy for a ride because Amy"], "had a car.", 1),
    schema(["The glass broke when it fell on the floor because the glass", "The glass broke when it fell on the "
            "floor because the floor"], "was thin.", 0),
    schema(["Mark gave the old coat to his brother's friend", "Mark gave the old coat to his sister's friend"],
           "who needed it for winter.", 1),
    schema(["The soup was hotter than the tea, so the soup", "The soup was hotter than the tea, so the tea"],
           "burned his tongue.", 0),
    schema(["Nina could not beat Olga at chess because Nina", "Nina could not beat Olga at chess because Olga"],
           "was the better player.", 1),
]


def _dyck():
    pairs = {"(": ")", "[": "]", "{": "}", "<": ">"}
    opens = ["( [", "{ <", "[ ( {", "< [", "( ( [", "{ [ <", "[ [", "< ( {", "( {", "[ < (", "{ { [", "< <",
             "( [ { <"]
    rows = []
    for sequence in opens:
        closing = " ".join(pairs[c] for c in reversed(sequence.split()))
        rows.append(lm("Complete the rest of the sequence, making sure that the parentheses are closed properly. "
                       f"Input: {sequence}", closing))
    return rows


LSAT_SETUP = ("A museum curator is scheduling seven exhibits (F, G, H, J, K, L and M) over seven consecutive weeks, "
              "one exhibit per week. G must be shown before H. K must be shown in the week immediately after J. "
              "F cannot be shown in the first week or the last week. M must be shown before both F and L. ")
LSAT = [
    mc(LSAT_SETUP + "Q: Which one of the following could be the exhibit shown in the first week? Answer Choices:",
       ["F", "H", "M", "K", "L"], 2),
    mc(LSAT_SETUP + "Q: If J is shown in the third week, which exhibit must be shown in the fourth week? Answer "
       "Choices:", ["K", "G", "F", "M", "H"], 0),
    mc(LSAT_SETUP + "Q: Which one of the following cannot be shown in the last week? Answer Choices:",
       ["H", "F", "L", "K", "J"], 1),
    mc(LSAT_SETUP + "Q: If H is shown in the second week, which exhibit is shown in the first week? Answer Choices:",
       ["M", "F", "G", "J", "L"], 2),
    mc(LSAT_SETUP + "Q: How many exhibits must be shown before L? Answer Choices:",
       ["none", "at least one", "at least three", "exactly five", "all six"], 1),
    mc(LSAT_SETUP + "Q: If M is shown in the sixth week, which exhibit is shown in the seventh week? Answer "
       "Choices:", ["F", "G", "H", "J", "L"], 4),
    mc(LSAT_SETUP + "Q: Which pair of exhibits must be shown in consecutive weeks? Answer Choices:",
       ["F and G", "G and H", "J and K", "L and M", "H and K"], 2),
    mc(LSAT_SETUP + "Q: If F is shown in the second week, which exhibit is shown in the first week? Answer Choices:",
       ["G", "J", "L", "M", "K"], 3),
    mc(LSAT_SETUP + "Q: Which one of the following could be shown in the last week? Answer Choices:",
       ["F", "J", "M", "H", "none of them"], 3),
    mc(LSAT_SETUP + "Q: If K is shown in the second week, which exhibit is shown in the first week? Answer "
       "Choices:", ["J", "G", "M", "L", "F"], 0),
    mc(LSAT_SETUP + "Q: Which exhibit can never be shown in the same week as another exhibit? Answer Choices:",
       ["F only", "G only", "J only", "K only", "every exhibit"], 4),
    mc(LSAT_SETUP + "Q: If G is shown in the sixth week, which exhibit is shown in the seventh week? Answer "
       "Choices:", ["F", "L", "H", "M", "J"], 2),
]

CS_ALGORITHMS = [
    lm("Given two strings, determine the length of the longest common subsequence. Strings: abcde ace\nAnswer:",
       "3"),
    lm("Given two strings, determine the length of the longest common subsequence. Strings: dog cat\nAnswer:",
       "0"),
    lm("Given two strings, determine the length of the longest common subsequence. Strings: abc abc\nAnswer:",
       "3"),
    lm("Determine whether the given sequence of parentheses is properly matched. Sequence: ( ( ) )\nAnswer:",
       "Valid"),
    lm("Determine whether the given sequence of parentheses is properly matched. Sequence: ( ) )\nAnswer:",
       "Invalid"),
    lm("Determine whether the given sequence of parentheses is properly matched. Sequence: [ ( ] )\nAnswer:",
       "Invalid"),
    lm("Given two strings, determine the length of the longest common subsequence. Strings: hello yellow\n"
       "Answer:", "4"),
    lm("Determine whether the given sequence of parentheses is properly matched. Sequence: { [ ] }\nAnswer:",
       "Valid"),
    lm("Given two strings, determine the length of the longest common subsequence. Strings: abab baba\nAnswer:",
       "3"),
    lm("Determine whether the given sequence of parentheses is properly matched. Sequence: ( ( (\nAnswer:",
       "Invalid"),
    lm("Given two strings, determine the length of the longest common subsequence. Strings: xyz zyx\nAnswer:",
       "1"),
    lm("Determine whether the given sequence of parentheses is properly matched. Sequence: ( ) [ ]\nAnswer:",
       "Valid"),
]


def _operators():
    rows = []
    for a, b in [(3, 4), (5, 2), (7, 1), (2, 9), (6, 6), (8, 3), (1, 5), (4, 4), (9, 2), (10, 7), (12, 3), (5, 5)]:
        rows.append(lm(f"op1 op op2 = op1 + 2 * op2. {a} op {b} =", str(a + 2 * b)))
    return rows


def _repeat_copy():
    words = ["cat", "the dog", "hello world", "sun", "blue sky", "apple", "rain", "one two", "book", "green tea",
             "yes", "moon"]
    numbers = ["two", "three", "two", "four", "two", "three", "two", "three", "four", "two", "three", "two"]
    counts = {"two": 2, "three": 3, "four": 4}
    return [lm(f"Q: repeat {word} {n} times\nA:", " ".join([word] * counts[n])) for word, n in zip(words, numbers)]


SQUAD_PASSAGES = [  # (title, passage, [question, answer], [question, answer])
    ("Amazon rainforest",
     "The Amazon rainforest covers much of the Amazon basin of South America. The basin covers seven million square "
     "kilometres, of which five and a half million are covered by the rainforest. The region includes territory "
     "belonging to nine nations, and the majority of the forest is contained within Brazil.",
     ["Which country holds most of the Amazon rainforest?", "Brazil"],
     ["How many nations have territory in the region?", "nine"]),
    ("Oxygen",
     "Oxygen is a chemical element with symbol O and atomic number 8. It is a member of the chalcogen group on the "
     "periodic table and is a highly reactive nonmetal. By mass, oxygen is the third most abundant element in the "
     "universe, after hydrogen and helium.",
     ["What is the atomic number of oxygen?", "8"],
     ["Which elements are more abundant than oxygen in the universe?", "hydrogen and helium"]),
    ("Great Wall of China",
     "The Great Wall of China is a series of fortifications built across the historical northern borders of China "
     "to protect against nomadic groups. Several walls were built from as early as the seventh century BC, and the "
     "best known sections were built by the Ming dynasty.",
     ["Which dynasty built the best known sections of the wall?", "the Ming dynasty"],
     ["Against whom was the wall built to protect?", "nomadic groups"]),
    ("Queen Victoria",
     "Victoria was Queen of the United Kingdom from 20 June 1837 until her death in 1901. Her reign of 63 years "
     "and seven months was longer than that of any of her predecessors and is known as the Victorian era.",
     ["When did Victoria become Queen?", "20 June 1837"],
     ["What is her reign known as?", "the Victorian era"]),
    ("Nile",
     "The Nile is a major north flowing river in northeastern Africa. It flows into the Mediterranean Sea. The Nile "
     "is among the longest rivers in the world, and its drainage basin covers eleven countries.",
     ["Into which sea does the Nile flow?", "the Mediterranean Sea"],
     ["How many countries does its drainage basin cover?", "eleven"]),
    ("Photosynthesis",
     "Photosynthesis is a process used by plants to convert light energy into chemical energy that can later be "
     "released to fuel the plant's activities. Most plants, algae and cyanobacteria perform photosynthesis, and "
     "they release oxygen as a by-product.",
     ["What do plants release as a by-product?", "oxygen"],
     ["What kind of energy do plants convert light into?", "chemical energy"]),
    ("Piano",
     "The piano was invented by Bartolomeo Cristofori in Italy around the year 1700. It is played using a keyboard, "
     "which is a row of keys that the performer presses down or strikes with the fingers and thumbs of both hands.",
     ["Who invented the piano?", "Bartolomeo Cristofori"],
     ["In which country was the piano invented?", "Italy"]),
]

SQUAD = [lm(f"Title: {title}\nBackground: {passage}\nQuestion: {question}\nAnswer:", answer)
         for title, passage, *pairs in SQUAD_PASSAGES for question, answer in pairs]

COQA_STORIES = [
    ("Once upon a time, in a barn near a farm house, there lived a little white kitten named Cotton. Cotton lived "
     "high up in a nice warm place above the barn where all of the farmer's horses slept. But Cotton wasn't alone in "
     "her little home above the barn. She shared her hay bed with her mommy and five other sisters.",
     "Where did Cotton live?", "above the barn"),
    ("Jessica went to sit in her rocking chair. Today was her birthday and she was turning eighty. Her "
     "granddaughter Annie was coming over in the afternoon and Jessica was very excited to see her. Her daughter "
     "Melanie and Melanie's husband Josh were coming as well.",
     "How old was Jessica turning?", "eighty"),
    ("The library in the small town opened at nine every morning. Mr. Lee, the librarian, always arrived early to "
     "water the plants by the window and to sort the returned books. The children liked him because he read them a "
     "story every Saturday afternoon.",
     "When did Mr. Lee read stories?", "every Saturday afternoon"),
    ("Ben and his father built a small wooden boat in their garage over the summer. They painted it bright green "
     "and named it the Frog. On the last day of August they carried it down to the lake and rowed it to the small "
     "island in the middle.",
     "What color was the boat?", "bright green"),
    ("The city held a festival every spring in the main square. There were stalls selling honey, bread and flowers, "
     "and a band played music until late in the evening. This year it rained all morning, but the sun came out just "
     "before noon.",
     "When did the sun come out?", "just before noon"),
    ("Lucy found an injured bird in her yard after a storm. She put it in a shoebox lined with a soft towel and "
     "called the animal shelter. A volunteer named Carlos came to pick it up and told her the bird was a young "
     "robin.",
     "What kind of bird was it?", "a young robin"),
    ("The old lighthouse stood on a rock at the edge of the bay. For a hundred years its keeper climbed the "
     "spiral stairs each night to light the lamp. Today the light works by itself, and the keeper's house has "
     "become a small museum about ships.",
     "What did the keeper's house become?", "a small museum"),
    ("Omar wanted to learn to play the guitar. His uncle gave him an old guitar with only five strings, so Omar "
     "saved his pocket money for three weeks to buy a new string. Then his uncle showed him how to tune it.",
     "How long did Omar save money?", "three weeks"),
    ("At the zoo, the keepers feed the penguins fish twice a day. Visitors gather at the glass wall at ten in the "
     "morning to watch. The youngest penguin, Pip, always waits at the back until the others have eaten.",
     "What is the youngest penguin called?", "Pip"),
    ("Grace planted a row of sunflowers along the fence in May. By the end of July the flowers were taller than "
     "her father. In the autumn she dried the seeds and gave some to each of her neighbors.",
     "What did Grace give her neighbors?", "some of the seeds"),
    ("The school bus broke down on the bridge one winter morning. The driver called for help, and a second bus "
     "arrived twenty minutes later. The students were late for their first class, which was math.",
     "How long did the second bus take?", "twenty minutes"),
    ("Mia's grandmother taught her to bake bread on Sunday mornings. They mixed flour, water, salt and yeast, then "
     "waited for the dough to rise. Mia's favorite part was shaping the loaves into little animals.",
     "What was Mia's favorite part?", "shaping the loaves into little animals"),
]

COQA = [lm(f"Below is a story followed by a question.\n{story}\nQ: {question}\nA:", answer)
        for story, question, answer in COQA_STORIES]

BOOLQ_ITEMS = [
    ("Ethanol fuel is ethyl alcohol, the same type of alcohol found in alcoholic drinks, used as fuel.",
     "is ethanol the same alcohol as in drinks", 1),
    ("The Moon has no atmosphere to speak of, so there is no weather and the sky is always black.",
     "does the moon have weather", 0),
    ("Penguins are flightless birds that live almost exclusively in the Southern Hemisphere.",
     "can penguins fly", 0),
    ("Tomatoes are botanically fruits, although they are usually cooked and eaten as vegetables.",
     "is a tomato a fruit", 1),
    ("The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions.",
     "is the pacific the largest ocean", 1),
    ("Bats are mammals; they give birth to live young and feed them milk.", "do bats lay eggs", 0),
    ("Mount Everest is Earth's highest mountain above sea level, located in the Himalayas.",
     "is mount everest in the himalayas", 1),
    ("Spiders have eight legs and are arachnids, not insects, which have six legs.", "is a spider an insect", 0),
    ("The Sahara is a desert on the African continent and is the largest hot desert in the world.",
     "is the sahara in africa", 1),
    ("Sharks are fish; they breathe through gills and have skeletons made of cartilage.",
     "do sharks have bones made of cartilage", 1),
    ("Venus is the second planet from the Sun and the hottest planet in the solar system.",
     "is venus the closest planet to the sun", 0),
    ("Whales are mammals that breathe air through blowholes on the top of their heads.", "do whales breathe air", 1),
]

BOOLQ = [mc(f"Passage: {passage}\nQuestion: {question}?", ["no", "yes"], gold)
         for passage, question, gold in BOOLQ_ITEMS]

LANGUAGES = ["English", "French", "German", "Spanish", "Italian", "Dutch"]
SENTENCES = [("Where is the train station?", "English"), ("Où est la gare ?", "French"),
             ("Wo ist der Bahnhof?", "German"), ("¿Dónde está la estación?", "Spanish"),
             ("Dov'è la stazione?", "Italian"), ("Waar is het station?", "Dutch"),
             ("I would like a cup of coffee.", "English"), ("Je voudrais un café.", "French"),
             ("Ich möchte einen Kaffee.", "German"), ("Quiero un café, por favor.", "Spanish"),
             ("Vorrei un caffè.", "Italian"), ("Ik wil graag een koffie.", "Dutch"),
             ("Das Wetter ist heute schön.", "German")]
LANGUAGE_ID = [mc(f"Given a sentence, select the correct language among the choices.\nSentence: {sentence}\n"
                  "Language:", LANGUAGES, LANGUAGES.index(language)) for sentence, language in SENTENCES]

DATA = {
    "language_understanding/hellaswag.jsonl": HELLASWAG,
    "world_knowledge/jeopardy_all.jsonl": JEOPARDY,
    "world_knowledge/bigbench_qa_wikidata.jsonl": QA_WIKIDATA,
    "world_knowledge/arc_easy.jsonl": ARC_EASY,
    "world_knowledge/arc_challenge.jsonl": ARC_CHALLENGE,
    "commonsense_reasoning/copa.jsonl": COPA,
    "commonsense_reasoning/commonsense_qa.jsonl": COMMONSENSE_QA,
    "commonsense_reasoning/piqa.jsonl": PIQA,
    "commonsense_reasoning/openbook_qa.jsonl": OPENBOOK_QA,
    "language_understanding/lambada_openai.jsonl": LAMBADA,
    "language_understanding/winograd_wsc.jsonl": WINOGRAD,
    "language_understanding/winogrande.jsonl": WINOGRANDE,
    "symbolic_problem_solving/bigbench_dyck_languages.jsonl": _dyck(),
    "symbolic_problem_solving/agi_eval_lsat_ar.jsonl": LSAT,
    "symbolic_problem_solving/bigbench_cs_algorithms.jsonl": CS_ALGORITHMS,
    "symbolic_problem_solving/bigbench_operators.jsonl": _operators(),
    "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl": _repeat_copy(),
    "reading_comprehension/squad.jsonl": SQUAD,
    "reading_comprehension/coqa.jsonl": COQA,
    "reading_comprehension/boolq.jsonl": BOOLQ,
    "language_understanding/bigbench_language_identification.jsonl": LANGUAGE_ID,
}

# Rows of the real eval_meta_data.csv for tasks that core.yaml does not list: they must be ignored.
EXTRA_META = [("mmlu_fewshot", "world knowledge", "multiple choice", 5, 25.0),
              ("gsm8k", "symbolic problem solving", "language modeling", 8, 0.0)]


def core_yaml():
    lines = ["icl_tasks:"]
    for label, (kind, shots, delimiter, _, uri) in TASKS.items():
        lines += ["-", f"  label: {label}", f"  dataset_uri: {uri}", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {kind}"]
        if delimiter != " ":  # the real file names the delimiter only where it is not the default " "
            lines.append(f"  continuation_delimiter: {json.dumps(delimiter)}")
        if label == "squad":  # ... and once the default spelled out
            lines.append('  continuation_delimiter: " "')
    return "\n".join(lines) + "\n"


def meta_csv():
    import csv
    import io
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Eval Task", "Task Category", "Task Type", "#shots", "#datapoints", "Random baseline",
                     "Centered Metric?", "Description"])
    rows = [(label, uri.split("/")[0].replace("_", " "), kind.replace("_", " "), shots, baseline)
            for label, (kind, shots, _, baseline, uri) in TASKS.items()] + EXTRA_META
    for label, category, kind, shots, baseline in sorted(rows):  # not in core.yaml's order
        count = len(DATA[TASKS[label][4]]) if label in TASKS else 100
        writer.writerow([label, category, kind, shots, count, baseline, "Yes",
                         f"{label}, a test fixture: short, hand-written rows"])
    return out.getvalue()


def write_bundle(folder):
    """Writes <folder>/eval_bundle (core.yaml, eval_meta_data.csv, eval_data/...); returns its path."""
    bundle = os.path.join(str(folder), "eval_bundle")
    for uri, rows in DATA.items():
        os.makedirs(os.path.dirname(os.path.join(bundle, "eval_data", uri)), exist_ok=True)
        with open(os.path.join(bundle, "eval_data", uri), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(os.path.join(bundle, "core.yaml"), "w", newline="\n") as f:
        f.write(core_yaml())
    with open(os.path.join(bundle, "eval_meta_data.csv"), "w", newline="") as f:
        f.write(meta_csv())
    return bundle


def make_zip(folder):
    """<folder>/eval_bundle.zip holding eval_bundle/... as the real bundle does (written first if missing);
    fixed timestamps and order, so the zip's bytes and sha256 are always the same."""
    folder = str(folder)
    bundle = os.path.join(folder, "eval_bundle")
    if not os.path.isdir(bundle):
        write_bundle(folder)
    zip_path = os.path.join(folder, "eval_bundle.zip")
    entries = []
    for root, dirs, names in os.walk(bundle):
        dirs.sort()
        entries.append(os.path.relpath(root, folder) + "/")
        entries += [os.path.join(os.path.relpath(root, folder), name) for name in sorted(names)]
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in entries:
            info = zipfile.ZipInfo(name.replace(os.sep, "/"), date_time=(2024, 1, 1, 0, 0, 0))
            if name.endswith("/"):
                info.external_attr = 0o40755 << 16 | 0x10
                archive.writestr(info, b"")
            else:
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(os.path.join(folder, name), "rb") as f:
                    archive.writestr(info, f.read())
    return zip_path


if __name__ == "__main__":  # python -m tests.core_fixture DIR: the fixture bundle for offline smoke runs
    import sys
    print(write_bundle(sys.argv[1]))
